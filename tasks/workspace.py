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
SCORE_HISTOGRAM = "metrics/pool_scores.png"
STOP_SET = "metrics/stop_set.csv"  # the stop set's ids and each round's predicted class (stopping criteria)
STOPPING = "metrics/stopping.json"  # the round's stopping decisions
VALIDATION = "validation"
VALIDATION_RESULTS = "validation/results.json"
DATA_DOCS = "validation/data_docs"
#: Workspace-local caches (git-ignored): losing them costs time, never correctness.
CACHE_DIR = ".al"
IMAGE_CHECKS = ".al/image-checks.json"
LABEL_STUDIO_STATE = ".al/labelstudio.json"  # the workspace's Label Studio project (url, title, id)

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
    training: dict[str, Any] = field(default_factory=lambda: _default_training())
    inference: dict[str, Any] = field(default_factory=lambda: {"batch_size": 256})
    #: Post-hoc calibration fitted by the train step on fit's validation split (al_lib.calibration):
    #: "none", "temperature" or "dirichlet"; the score step then scores calibrated probabilities.
    calibration: str = "none"
    #: Stopping criteria (al_lib.stopping), ``[{name: kappa_average, threshold: 0.99}, ...]``; what a
    #: fired one does (``report``, or ``pause`` the schedule of the deployment that ran the round);
    #: the size of the fixed stop set whose predictions the stop-set criteria compare.
    stopping: list = field(default_factory=list)
    stopping_action: str = "report"
    stop_set_size: int = 1000
    #: How simulation's round-0 initial labels are chosen: "random", or a cold-start strategy
    #: ("typiclust", "probcover") on the untrained model's features (tasks/oracle.py).
    initial_strategy: str = "random"
    #: The options of ``heuristic`` / ``initial_strategy``: in params.yaml their mapping form,
    #: ``heuristic: {name: probcover, delta: 0.5}`` (so DVC tracks them as the ``heuristic`` param).
    strategy_options: dict[str, Any] = field(default_factory=dict)
    initial_options: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.model["input_shape"])

    def as_dict(self) -> dict[str, Any]:
        """The params.yaml mapping (a strategy with options in its mapping form)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in _OPTIONS.values()}
        for key, options in _OPTIONS.items():
            if getattr(self, options):
                out[key] = {"name": out[key], **getattr(self, options)}
        return out


#: params.yaml keys that name a strategy, and the Params field holding the options of their mapping form.
_OPTIONS = {"heuristic": "strategy_options", "initial_strategy": "initial_options"}
#: The strategies that can choose the initial labels (they need no trained model).
INITIAL_STRATEGIES = ("random", "typiclust", "probcover")


def _default_training() -> dict[str, Any]:
    """``training:`` when params.yaml has none: al_lib's protocol for few labels (imported on use:
    torch loads with it)."""
    from al_lib.training import ACTIVE_LEARNING_TRAINING

    return dict(ACTIVE_LEARNING_TRAINING)


def _check(condition: bool, path: Path, name: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"{path}: field {name!r} {message}")


def parse_params(raw: dict[str, Any], path: Path) -> Params:
    """Validate the mapping read from ``path`` and build :class:`Params`."""
    from al_lib.strategies import available_strategies

    _check(isinstance(raw, dict), path, "(top level)", "must be a mapping")
    raw = {k: v for k, v in raw.items() if k not in STAGE_SECTIONS}
    unknown = set(raw) - (set(Params.__dataclass_fields__) - set(_OPTIONS.values()))
    _check(not unknown, path, ",".join(sorted(unknown)), "is not a known parameter")
    raw = {**raw, **_strategy_mappings(raw, path)}
    classes = raw.get("classes")
    _check(isinstance(classes, list) and len(classes) >= 2, path, "classes", "must list at least 2 class names")
    classes = [str(c) for c in classes]
    _check(len(set(classes)) == len(classes), path, "classes", "has duplicate names")
    params = Params(**{**raw, "classes": classes})
    _check(params.heuristic in available_strategies(), path, "heuristic",
           f"must be one of {available_strategies()}, got {params.heuristic!r}")
    _check(params.initial_strategy in INITIAL_STRATEGIES, path, "initial_strategy",
           f"must be one of {list(INITIAL_STRATEGIES)}, got {params.initial_strategy!r}")
    _check_strategy_options(params, path)
    for name in ("mc_iterations", "query_size", "initial_labels"):
        value = getattr(params, name)
        _check(_is_int(value) and value >= 1, path, name, f"must be an integer >= 1, got {value!r}")
    _check_training(params, path)
    _check_calibration(params, path)
    _check_stopping(params, path)
    _check(isinstance(params.seed, int), path, "seed", f"must be an integer, got {params.seed!r}")
    sub = params.pool_subsample
    _check(sub is None or (isinstance(sub, int) and sub >= 1) or (isinstance(sub, float) and 0 < sub <= 1),
           path, "pool_subsample", f"must be null, an integer >= 1 or a fraction in (0, 1], got {sub!r}")
    _check(isinstance(params.model, dict), path, "model", f"must be a mapping, got {params.model!r}")
    spec = model_spec(params, path.parent, check_files=True)
    _check(spec.mc != "ensemble" or params.mc_iterations == spec.ensemble_size, path, "mc_iterations",
           f"must equal model.ensemble_size ({spec.ensemble_size}: each member is one MC sample) "
           f"with model.mc 'ensemble', got {params.mc_iterations!r}")
    return params


def _strategy_mappings(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``heuristic: {name: ..., <option>: ...}`` mapping forms as name + options fields."""
    out: dict[str, Any] = {}
    for key, options in _OPTIONS.items():
        value = raw.get(key)
        if isinstance(value, dict):
            _check(isinstance(value.get("name"), str), path, f"{key}.name",
                   f"must name the strategy (a string), got {value.get('name')!r}")
            out[key], out[options] = value["name"], {k: v for k, v in value.items() if k != "name"}
        elif key in raw:
            _check(isinstance(value, str), path, key, f"must be a strategy name or a mapping with 'name', got {value!r}")
    return out


def _check_strategy_options(params: Params, path: Path) -> None:
    """Each option of ``heuristic`` / ``initial_strategy`` is one its strategy takes, with a value
    it accepts (the strategy is built once here); ParamsError naming ``heuristic.<option>``."""
    from tasks.strategy import round_settings, strategy_from, strategy_options

    for key, options in _OPTIONS.items():
        name, values = getattr(params, key), getattr(params, options)
        settings = round_settings(name)
        try:
            known = strategy_options(name, len(params.classes)) | set(settings)
        except (TypeError, ValueError) as err:  # a strategy that cannot be built without options
            known = set(values)
            _check(bool(values), path, key, str(err))
        for option, value in values.items():
            _check(option in known, path, f"{key}.{option}",
                   f"is not an option of {name!r} (known: {', '.join(sorted(known)) or 'none'})")
            _check(value is None or isinstance(value, (int, float, str)), path, f"{key}.{option}",
                   f"must be a number, a string or null, got {value!r}")
            _check(option not in settings or value in settings[option], path, f"{key}.{option}",
                   f"must be one of {list(settings.get(option, ()))}, got {value!r}")
        try:
            strategy_from(name, values, len(params.classes))
        except (TypeError, ValueError) as err:
            bad = [o for o in values if o in str(err)]
            raise ParamsError(f"{path}: field {(key + '.' + bad[0]) if bad else key!r} {err}") from None


def _check_stopping(params: Params, path: Path) -> None:
    """``stopping:`` builds with :func:`al_lib.stopping.criteria_from_config` (a ``delta_f``
    ``positive`` is a class name, needed with more than 2 classes); ParamsError naming
    ``stopping[i].<field>``."""
    from al_lib.stopping import criteria_from_config
    from al_lib.transforms import ConfigError

    entries = params.stopping
    _check(isinstance(entries, list), path, "stopping", f"must be a list of criteria, got {entries!r}")
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("name") == "delta_f":
            positive = entry.get("positive", params.classes[1] if len(params.classes) == 2 else None)
            _check(positive is not None, path, f"stopping[{i}].positive",
                   f"must name the class whose F is tracked when there are {len(params.classes)} classes")
            _check(str(positive) in params.classes, path, f"stopping[{i}].positive",
                   f"must be one of the classes {params.classes}, got {positive!r}")
    try:
        criteria_from_config([_criterion_config(e, params.classes) for e in entries])
    except ConfigError as err:
        raise ParamsError(f"{path}: field {err.key!r} {err.reason}") from None
    _check(params.stopping_action in ("report", "pause"), path, "stopping_action",
           f"must be 'report' or 'pause', got {params.stopping_action!r}")
    _check(_is_int(params.stop_set_size) and params.stop_set_size >= 1, path, "stop_set_size",
           f"must be an integer >= 1, got {params.stop_set_size!r}")


def _criterion_config(entry, classes: list[str]):
    """A ``stopping:`` entry as al_lib takes it (``delta_f``'s ``positive`` class name → its index)."""
    if isinstance(entry, dict) and entry.get("name") == "delta_f":
        positive = entry.get("positive", classes[1] if len(classes) == 2 else None)
        return {**entry, "positive": classes.index(str(positive))}
    return entry


def stopping_criteria(params: Params) -> list:
    """The round's :mod:`al_lib.stopping` criteria, from ``params.stopping`` (validated)."""
    from al_lib.stopping import criteria_from_config

    return criteria_from_config([_criterion_config(e, params.classes) for e in params.stopping])


def _check_calibration(params: Params, path: Path) -> None:
    """``calibration`` is one of :data:`al_lib.calibration.CALIBRATION_METHODS`, with a validation
    split to fit it on."""
    from al_lib.calibration import CALIBRATION_METHODS

    _check(params.calibration in CALIBRATION_METHODS, path, "calibration",
           f"must be one of {list(CALIBRATION_METHODS)}, got {params.calibration!r}")
    import inspect

    from al_lib.training import fit

    val_fraction = params.training.get("val_fraction", inspect.signature(fit).parameters["val_fraction"].default)
    _check(params.calibration == "none" or (isinstance(val_fraction, (int, float)) and val_fraction > 0), path,
           "calibration", f"{params.calibration!r} is fitted on the validation split: set training.val_fraction "
           f"> 0 (e.g. 0.2), got {val_fraction!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML's true is no count


#: ``training:`` keys a workspace may not set: the train step passes them itself.
_TRAINING_SET_BY_STEP = ("model", "train_set", "val_set", "initial_state", "device", "seed", "progress",
                         "callbacks", "augment", "loss", "num_workers")


def _check_training(params: Params, path: Path) -> None:
    """``training:`` holds options of :func:`al_lib.training.fit` of the types of its defaults
    (ints >= 0, or >= 1 for ``max_epochs``/``batch_size``; numbers >= 0), ``inference.batch_size``
    an integer >= 1; ParamsError naming ``training.<key>``."""
    import inspect

    from al_lib.training import fit

    for section in ("training", "inference"):
        _check(isinstance(getattr(params, section), dict), path, section,
               f"must be a mapping, got {getattr(params, section)!r}")
    options = {name: p for name, p in inspect.signature(fit).parameters.items()
               if p.kind is p.KEYWORD_ONLY and name not in _TRAINING_SET_BY_STEP}
    for key, value in params.training.items():
        name = f"training.{key}"
        _check(key in options, path, name, f"is not an option of the training (known: {', '.join(sorted(options))})")
        default = options[key].default
        if value is None and "None" in str(options[key].annotation):
            continue
        if isinstance(default, bool) or default is None:
            _check(value is None or isinstance(value, type(default) if default is not None else object), path, name,
                   f"must be {type(default).__name__}, got {value!r}")
        elif isinstance(default, int):
            low = 1 if key in ("max_epochs", "batch_size") else 0
            _check(_is_int(value) and value >= low, path, name, f"must be an integer >= {low}, got {value!r}")
        elif isinstance(default, float):
            _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, path, name,
                   f"must be a number >= 0, got {value!r}")
        elif isinstance(default, str):
            _check(isinstance(value, str), path, name, f"must be a string, got {value!r}")
    size = params.inference.get("batch_size", 256)
    _check(_is_int(size) and size >= 1, path, "inference.batch_size", f"must be an integer >= 1, got {size!r}")


def model_spec(params: Params, root: Path, *, check_files: bool = False):
    """``params.model`` as a validated :class:`al_lib.models.ModelSpec` (weights and entry points
    relative to the workspace ``root``); ParamsError naming ``model.<key>`` and the bad value."""
    from al_lib.models import ModelSpec
    from al_lib.transforms import ConfigError

    try:
        return ModelSpec.from_config(params.model, root=root, check_files=check_files)
    except ConfigError as err:
        raise ParamsError(f"{root / PARAMS_FILE}: field 'model.{err.key}' {err.reason}") from None


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
        """The pool manifest ``id,path[,split]``, validated by :func:`al_lib.data.manifest.read_manifest`
        (strings, index = CSV line; read once per version of the file)."""
        from al_lib.data.manifest import read_manifest

        path = self.path(MANIFEST)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no pool manifest — is {self.root} a workspace? (create one with `al init`)")
        return _read_once(path, lambda: read_manifest(path)).copy()

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
        """``data/labels.csv`` as the labels table of :mod:`al_lib.labels`, validated (read once
        per version of the file; an empty table before the first label)."""
        from al_lib.labels import empty_labels, read_labels

        path = self.path(LABELS)
        if not path.is_file():
            return empty_labels()
        return _read_once(path, lambda: read_labels(path)).copy()

    def inputs(self) -> RoundInputs:
        """The round's validated inputs — params, manifest, labels, held-out ids, round — read once
        and handed to every step (see :class:`RoundInputs`)."""
        return RoundInputs(self.params(), self.manifest(), self.labels(), frozenset(self.held_out_ids()),
                           self.round())

    def write_labels(self, frame: pd.DataFrame) -> None:
        from al_lib.labels import write_labels

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

    def baseline_paths(self, baseline: str) -> tuple[Path, Path]:
        """``metrics/baseline-<name>.csv`` (the reference arm's rounds) and
        ``metrics/learning_curve_vs_<name>.png`` (both arms' learning curves)."""
        return self.path(f"metrics/baseline-{baseline}.csv"), self.path(f"metrics/learning_curve_vs_{baseline}.png")

    def query_thumbnails(self, round: int) -> Path:
        """``data/queries/round-N.png``: the thumbnail grid of round N's queries."""
        return self.path(QUERIES) / f"round-{round}.png"

    def inbox_files(self) -> list[Path]:
        """Annotation files waiting in ``data/inbox/`` (not in its processed/ subfolder), sorted."""
        inbox = self.path(INBOX)
        if not inbox.is_dir():
            return []
        return sorted(p for p in inbox.iterdir() if p.is_file() and p.suffix.lower() in (".csv", ".json"))

    def processed_dir(self, round: int) -> Path:
        return self.path(INBOX) / "processed" / f"round-{round}"


@dataclass(frozen=True)
class RoundInputs:
    """What a round's steps read, validated once: the one object each step is handed.

    Built by :meth:`Workspace.inputs` from the workspace files (each parsed once per version of
    the file, so the steps of one in-process round share one reading and a step run alone by
    ``dvc repro`` reads exactly the same). Frames are copies: a step may change them freely.

    Attributes
    ----------
    params : Params
    manifest : DataFrame
        ``id,path[,split]`` (:func:`al_lib.data.manifest.read_manifest`).
    labels : DataFrame
        The labels table (:mod:`al_lib.labels`), held-out labels included.
    held_out : frozenset of str
        Ids of the held-out splits (test/val): never queried nor trained on.
    round : int
        The round in progress (``round.yaml``).
    """

    params: Params
    manifest: pd.DataFrame
    labels: pd.DataFrame
    held_out: frozenset
    round: int

    @property
    def train_labels(self) -> pd.DataFrame:
        """The labels a model trains on: all but the held-out ones."""
        return self.labels[~self.labels["id"].isin(self.held_out)]

    @property
    def held_out_labels(self) -> pd.DataFrame:
        """The labels that measure the model (held-out splits)."""
        return self.labels[self.labels["id"].isin(self.held_out)]


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
