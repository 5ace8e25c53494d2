"""A workspace on disk: where each file of a production AL round lives, and its parameters.

Plain Python (no Prefect): the round flow, the ``dvc repro`` stages and the CLI all go through
this one description of the layout (see docs/architecture.md, "The production pipeline").
"""

from __future__ import annotations

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
IMAGES_DIR = "data/pool/images"
ROUND_FILE = "round.yaml"
LABELS = "data/labels.csv"
ORACLE_LABELS = "data/oracle/labels.csv"
INBOX = "data/inbox"
QUERIES = "data/queries"
SCORES = "data/scores/pool_scores.npz"
PROCESSED = "data/inbox/processed"
MODEL = "models/model.pt"
TRAIN_METRICS = "metrics/train.json"
ROUNDS_METRICS = "metrics/rounds.csv"
LEARNING_CURVE = "metrics/learning_curve.png"
VALIDATION = "validation"
VALIDATION_RESULTS = "validation/results.json"
DATA_DOCS = "validation/data_docs"
#: Workspace-local caches (git-ignored): losing them costs time, never correctness.
CACHE_DIR = ".al"
IMAGE_CHECKS = ".al/image-checks.json"

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
    from al_lib.strategies import available_strategies

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
        """params.yaml, validated (parsed once per version of the file: steps share one reading)."""
        path = self.path(PARAMS_FILE)
        if not path.is_file():
            raise ParamsError(f"{path}: not found — is {self.root} a workspace? (create one with `al init`)")

        def parse() -> Params:
            try:
                raw = yaml.safe_load(path.read_text())
            except yaml.YAMLError as err:
                raise ParamsError(f"{path}: not valid YAML: {err}") from err
            return parse_params(raw, path)

        return _read_once(path, parse)

    def manifest(self) -> pd.DataFrame:
        """The pool manifest ``id,path[,split]`` (strings; read once per version of the file)."""
        path = self.path(MANIFEST)
        return _read_once(path, lambda: pd.read_csv(path, dtype=str, keep_default_na=False)).copy()

    def held_out_ids(self) -> set[str]:
        """Ids in a held-out split (test/val): never queried nor trained on; their labels measure the model."""
        manifest = self.manifest()
        if "split" not in manifest:
            return set()
        return set(manifest["id"][manifest["split"].str.lower().isin(HELD_OUT_SPLITS)])

    def round(self) -> int:
        """The round recorded in ``round.yaml``: the round in progress, or the last one (0 before any)."""
        path = self.path(ROUND_FILE)
        if not path.is_file():
            return 0
        value = (yaml.safe_load(path.read_text()) or {}).get("round", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ParamsError(f"{path}: field 'round' must be an integer >= 0, got {value!r}")
        return value

    def write_round(self, round: int) -> None:
        """Record ``round`` in ``round.yaml`` (a DVC param of every step that seeds by round)."""
        text = ("# The active-learning round in progress (or last finished): written by `al round`,\n"
                "# read by the pipeline steps (dvc.yaml params) to seed their draws.\n"
                f"round: {int(round)}\n")
        if not self.path(ROUND_FILE).is_file() or self.path(ROUND_FILE).read_text() != text:
            write_file(self.path(ROUND_FILE), text)

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


_READ_CACHE: dict[Path, tuple[tuple[int, int, int], object]] = {}


def _read_once(path: Path, parse):
    """``parse()``, remembered while ``path`` keeps its size, mtime and inode (one parse per version)."""
    stat = path.stat()
    key = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
    cached = _READ_CACHE.get(path)
    if cached is None or cached[0] != key:
        cached = (key, parse())
        _READ_CACHE[path] = cached
    return cached[1]


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
