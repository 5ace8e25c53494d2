"""A workspace on disk: where each file of a production AL round lives, and its parameters.

Plain Python (no Prefect): the round flow, the ``dvc repro`` stages and the CLI all go through
this one description of the layout (see docs/architecture.md, "The production pipeline").
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from al_lib.atomic import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"
MANIFEST = "data/pool/manifest.csv"
LABELS = "data/labels.csv"
ORACLE_LABELS = "data/oracle/labels.csv"
INBOX = "data/inbox"
QUERIES = "data/queries"
SCORES = "data/scores/pool_scores.npz"
MODEL = "models/model.pt"
TRAIN_METRICS = "metrics/train.json"
ROUNDS_METRICS = "metrics/rounds.csv"
VALIDATION = "validation"

# The params.yaml fields each step reads: its caches are keyed on these, not on the whole file.
TRAIN_PARAMS = ("classes", "seed", "model", "training", "mc_iterations", "inference")
SCORE_PARAMS = ("classes", "seed", "heuristic", "mc_iterations", "pool_subsample", "inference")
QUERY_PARAMS = ("classes", "seed", "heuristic", "query_size")

# Splits that are never queried: their labels (when known) measure the model instead.
HELD_OUT_SPLITS = ("test", "val", "valid", "validation")
# Sections of params.yaml read by other dvc.yaml stages (the demo's `prepare`), not by a round.
STAGE_SECTIONS = ("prepare",)


class ParamsError(ValueError):
    """params.yaml is missing a field or holds a bad value; the message names file and field."""


@dataclass(frozen=True)
class Params:
    """The round's configuration, read from ``params.yaml`` (DVC params)."""

    classes: list[str]
    heuristic: str = "bald"
    mc_iterations: int = 20
    query_size: int = 20
    pool_subsample: int | float | None = 2000
    seed: int = 0
    initial_labels: int = 20
    model: dict[str, Any] = field(default_factory=lambda: {"name": "gal_cnn", "input_shape": [1, 28, 28]})
    training: dict[str, Any] = field(default_factory=lambda: {
        "max_epochs": 50, "patience": 5, "val_fraction": 0.2, "batch_size": 32, "lr": 0.001, "weight_decay": 0.0001})
    inference: dict[str, Any] = field(default_factory=lambda: {"batch_size": 256})

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.model["input_shape"])

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _check(condition: bool, path: Path, name: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"{path}: field {name!r} {message}")


def parse_params(raw: dict[str, Any], path: Path) -> Params:
    """Validate the mapping read from ``path`` and build :class:`Params`."""
    from al_lib.acquisition import available_strategies

    _check(isinstance(raw, dict), path, "(top level)", "must be a mapping")
    raw = {k: v for k, v in raw.items() if k not in STAGE_SECTIONS}
    unknown = set(raw) - set(Params.__dataclass_fields__)
    _check(not unknown, path, ",".join(sorted(unknown)), "is not a known parameter")
    classes = raw.get("classes")
    _check(isinstance(classes, list) and len(classes) >= 2, path, "classes", "must list at least 2 class names")
    classes = [str(c) for c in classes]
    _check(len(set(classes)) == len(classes), path, "classes", "has duplicate names")
    params = Params(**{**raw, "classes": classes})
    _check(params.heuristic in available_strategies(), path, "heuristic",
           f"must be one of {available_strategies()}, got {params.heuristic!r}")
    for name in ("mc_iterations", "query_size", "initial_labels"):
        value = getattr(params, name)
        _check(isinstance(value, int) and value >= 1, path, name, f"must be an integer >= 1, got {value!r}")
    _check(isinstance(params.seed, int), path, "seed", f"must be an integer, got {params.seed!r}")
    sub = params.pool_subsample
    _check(sub is None or (isinstance(sub, int) and sub >= 1) or (isinstance(sub, float) and 0 < sub <= 1),
           path, "pool_subsample", f"must be null, an integer >= 1 or a fraction in (0, 1], got {sub!r}")
    shape = params.model.get("input_shape") if isinstance(params.model, dict) else None
    _check(isinstance(shape, list) and len(shape) == 3 and shape[0] in (1, 3), path, "model.input_shape",
           f"must be [channels (1 or 3), height, width], got {shape!r}")
    _check(isinstance(params.model.get("name"), str), path, "model.name", "must name a model")
    return params


@dataclass(frozen=True)
class Workspace:
    """A git + DVC repository holding a pool of images and the labels collected so far."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root).resolve())

    def path(self, relative: str) -> Path:
        return self.root / relative

    def params(self) -> Params:
        path = self.path(PARAMS_FILE)
        if not path.is_file():
            raise ParamsError(f"{path}: not found — is {self.root} a workspace? (create one with `al init`)")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ParamsError(f"{path}: not valid YAML: {err}") from err
        return parse_params(raw, path)

    def manifest(self) -> pd.DataFrame:
        """The pool manifest ``id,path[,split]`` (strings)."""
        return pd.read_csv(self.path(MANIFEST), dtype=str, keep_default_na=False)

    def labels(self) -> pd.DataFrame:
        from al_lib.annotations import read_labels

        return read_labels(self.path(LABELS))

    def write_labels(self, frame: pd.DataFrame) -> None:
        from al_lib.annotations import write_labels

        write_labels(self.path(LABELS), frame)

    def oracle_labels(self) -> pd.DataFrame | None:
        """Hidden ground truth ``id,label`` for simulation, or None in a real workspace."""
        path = self.path(ORACLE_LABELS)
        if not path.is_file():
            return None
        return pd.read_csv(path, dtype=str, keep_default_na=False)

    def query_paths(self, round: int) -> tuple[Path, Path]:
        base = self.path(QUERIES)
        return base / f"round-{round}.csv", base / f"round-{round}.labelstudio.json"

    def inbox_files(self) -> list[Path]:
        """Annotation files waiting in ``data/inbox/`` (not in its processed/ subfolder), sorted."""
        inbox = self.path(INBOX)
        if not inbox.is_dir():
            return []
        return sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".json"))

    def processed_dir(self, round: int) -> Path:
        return self.path(INBOX) / "processed" / f"round-{round}"

    def params_digest(self, *fields: str) -> str:
        """sha256 of the named params.yaml fields, so a step reruns only when what it reads changed."""
        values = self.params().as_dict()
        text = json.dumps({f: values[f] for f in fields}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def file_digest(self, *relatives: str) -> str:
        """sha256 over the named files' contents (a missing file counts as empty)."""
        digest = hashlib.sha256()
        for rel in relatives:
            path = self.path(rel)
            digest.update(rel.encode() + b"\0")
            if path.is_file():
                digest.update(path.read_bytes())
            digest.update(b"\0")
        return digest.hexdigest()


def write_file(path: Path, data: str | bytes) -> None:
    """Atomically write ``data`` to ``path``, creating its folder (workspace outputs may be new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        atomic_write_text(path, data)
    else:
        atomic_write_bytes(path, data)


def write_params(path: Path, params: Params) -> None:
    """Write params.yaml atomically, in a stable order people can read and edit."""
    write_file(path, yaml.safe_dump(params.as_dict(), sort_keys=False))
