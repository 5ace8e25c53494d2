"""Round step: validate manifest, labels and pool images (Great Expectations) before training."""

from __future__ import annotations

import logging

from tasks.workspace import DATA_DOCS, IMAGE_CHECKS, Workspace

logger = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """The labelled set or manifest broke an expectation; ``report`` names the failing rows."""

    def __init__(self, report) -> None:
        super().__init__(report.summary())
        self.report = report


def validate_step(ws: Workspace, round: int | None = None, *, device=None, progress: bool = False) -> dict:
    """Check ``data/pool/manifest.csv``, ``data/labels.csv`` and the pool images.

    Images already checked are remembered by content (``.al/image-checks.json``), so a round
    decodes only new or changed files. Writes ``validation/results.json`` (deterministic: same
    inputs, same bytes) and the Data Docs.

    Returns the statistics; raises :class:`ValidationFailed` (nothing recorded) on a failure.
    """
    from tasks.validation import load_and_validate  # GX costs seconds to import

    report = load_and_validate(ws.root, ws.params().classes, docs_dir=ws.path(DATA_DOCS),
                               image_cache=ws.path(IMAGE_CHECKS))
    if not report.success:
        raise ValidationFailed(report)
    logger.info("%s", report.summary())
    return report.statistics
