"""The round's steps, each declared once: what it reads (files, params, code) and writes.

This table is the one declaration of the pipeline. ``dvc.yaml`` is generated from it
(:func:`dvc_yaml`), the Prefect round flow runs the same steps in the same order, and DVC's
``dvc.lock`` records every run of a step, whichever entry point ran it: a step is up to date when
DVC finds its inputs unchanged since that record (see :mod:`tasks.dvc_repo`). Nothing else
decides whether a step reruns — no cache keys beside it.

The pool enters through its manifest: pool images are immutable per id (a new image gets a new
id: ``al add-images``), and the validate step checks every new or changed file by content. The
image folder itself is not a DVC dependency, since DVC would stat and hash 100k+ files on every
status check (~6-17 s at 100k here) and the round's overhead must not grow with the pool.

Code is an input like any other: each step depends on the source files of the modules it runs,
found by following their imports inside this project (``al_lib``, ``tasks``), so an edit of
``al_lib/training.py`` invalidates ``train`` and not ``query``. Where the workspace is the code
checkout (the demo at the repository root) those paths are relative; elsewhere they are absolute
paths to the installed code, which DVC hashes like any dependency.
"""

from __future__ import annotations

import ast
import importlib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from tasks.workspace import (
    IMAGES_DIR, LABELS, LEARNING_CURVE, MANIFEST, MODEL, ORACLE_LABELS, QUERIES, ROUND_FILE,
    ROUNDS_METRICS, SCORE_HISTOGRAM, SCORES, STOP_SET, STOPPING, TRAIN_METRICS, VALIDATION_RESULTS, write_file,
)

#: The folder holding the project's packages (al_lib/, tasks/, flows/).
CODE_ROOT = Path(__file__).resolve().parent.parent
#: Packages whose files count as a step's code (third-party code is pinned by the environment).
PROJECT_PACKAGES = ("al_lib", "tasks")


@dataclass(frozen=True)
class Output:
    """A file or folder a step writes. ``cache=False``: kept in git (small, human-readable)."""

    path: str
    cache: bool = True
    persist: bool = False
    kind: str = "outs"  # "outs" | "metrics" | "plots"
    plot: dict | None = None


@dataclass(frozen=True)
class Step:
    """One step of the round.

    ``run`` is ``"module:function"``, called as ``function(ws, round, device=..., progress=...)``.
    ``params`` are top-level keys of params.yaml; every step of a round also reads the round
    number from ``round.yaml`` when ``reads_round`` (its draws are seeded by seed, round and step).
    """

    name: str
    run: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[Output, ...]
    reads_round: bool = True
    help: str = ""
    code: tuple[str, ...] = field(default=())

    @property
    def module(self) -> str:
        return self.run.split(":")[0]

    def function(self):
        module, name = self.run.split(":")
        return getattr(importlib.import_module(module), name)

    def code_files(self) -> list[Path]:
        """Source files of the modules this step runs (its own and every project import they make)."""
        return sorted(_import_closure((self.module, *self.code)))

    def output_paths(self) -> list[str]:
        return [o.path for o in self.outs]


VALIDATE = Step(
    name="validate", run="tasks.validate:validate_step",
    deps=(MANIFEST, LABELS), params=("classes",), reads_round=False,
    outs=(Output(VALIDATION_RESULTS, cache=False),),
    help="Great Expectations over manifest, labels and (new or changed) images",
)
TRAIN = Step(
    name="train", run="tasks.train:train_step",
    deps=(MANIFEST, LABELS, VALIDATION_RESULTS),
    params=("classes", "seed", "model", "training", "mc_iterations", "inference", "calibration"),
    outs=(Output(MODEL),
          Output(TRAIN_METRICS, cache=False, kind="metrics"),
          Output(ROUNDS_METRICS, cache=False, persist=True, kind="plots",
                 plot={"x": "n_labelled", "title": "learning curve", "x_label": "labelled images"}),
          Output(LEARNING_CURVE, cache=False, kind="plots")),
    help="train to convergence from the seeded initial weights; metrics on the held-out split",
)
SCORE = Step(
    name="score", run="tasks.score:score_step",
    deps=(MODEL, MANIFEST, LABELS, VALIDATION_RESULTS),
    params=("classes", "seed", "model", "heuristic", "mc_iterations", "pool_subsample", "inference"),
    outs=(Output(SCORES),),
    help="MC-dropout scores of a seeded subsample of the unlabelled pool",
)
QUERY = Step(
    name="query", run="tasks.query:query_step",
    # MODEL, LABELS, ROUNDS_METRICS and the stopping params: the round's stopping decisions (tasks/stopping.py)
    deps=(SCORES, MANIFEST, MODEL, LABELS, ROUNDS_METRICS),
    params=("classes", "seed", "heuristic", "query_size", "stopping", "stop_set_size", "model", "mc_iterations",
            "inference"),
    outs=(Output(QUERIES, cache=False, persist=True),  # round-N.csv, .labelstudio.json, .png (thumbnails)
          Output(SCORE_HISTOGRAM, cache=False, kind="plots"),
          Output(STOP_SET, cache=False, persist=True),  # the stop set: read back the next round
          Output(STOPPING, cache=False, kind="metrics")),
    help="select the next queries; export CSV + Label Studio tasks, thumbnails, pool-score histogram; "
         "stopping decisions",
)
#: The demo workspace's first stage: materialise the bundled MNIST pool (not part of a round).
PREPARE = Step(
    name="prepare", run="tasks.demo:prepare_step",
    deps=(), params=("prepare", "seed", "classes", "initial_labels"), reads_round=False,
    outs=(Output(IMAGES_DIR), Output(MANIFEST), Output(ORACLE_LABELS)),
    help="write the bundled MNIST digits as the demo pool",
)

#: The round's steps, in order.
ROUND_STEPS: tuple[Step, ...] = (VALIDATE, TRAIN, SCORE, QUERY)
STEPS: dict[str, Step] = {s.name: s for s in (PREPARE, *ROUND_STEPS)}


def dvc_yaml(workspace: str | os.PathLike, *, prepare: bool = False, held_out: bool = True) -> dict:
    """The ``dvc.yaml`` of a workspace, generated from the step declarations.

    ``prepare``: start with the demo's :data:`PREPARE` stage (the repository-root workspace).
    ``held_out``: the learning curve plots test accuracy (validation accuracy otherwise).
    """
    root = Path(workspace).resolve()
    steps = ((PREPARE,) if prepare else ()) + ROUND_STEPS
    return {"stages": {step.name: _stage(step, root, held_out) for step in steps}}


def write_dvc_yaml(workspace: str | os.PathLike, *, prepare: bool | None = None,
                   held_out: bool | None = None) -> bool:
    """(Re)write ``dvc.yaml`` when it differs from :func:`dvc_yaml`; True when it changed.

    ``prepare`` defaults to whether the current ``dvc.yaml`` has the demo's stage; ``held_out``
    to whether the workspace has labels of held-out images (true before any labels exist).
    """
    path = Path(workspace) / "dvc.yaml"
    current = path.read_text() if path.is_file() else None
    if prepare is None:
        prepare = current is not None and "prepare" in ((yaml.safe_load(current) or {}).get("stages") or {})
    if held_out is None:
        held_out = _has_held_out_labels(Path(workspace))
    text = render_dvc_yaml(dvc_yaml(workspace, prepare=prepare, held_out=held_out))
    if text == current:
        return False
    write_file(path, text)
    return True


def _has_held_out_labels(root: Path) -> bool:
    from tasks.workspace import Workspace

    ws = Workspace(root)
    if not (ws.path(LABELS).is_file() and ws.path(MANIFEST).is_file()):
        return True
    return bool(set(ws.labels()["id"]) & ws.held_out_ids())


def _params_present(root: Path) -> set[str] | None:
    """Top-level keys of ``root/params.yaml`` (None when it does not exist or is no mapping yet)."""
    from tasks.workspace import PARAMS_FILE

    path = root / PARAMS_FILE
    if not path.is_file():
        return None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # parse_params reports it, naming the file
    return set(raw) if isinstance(raw, dict) else None


def render_dvc_yaml(document: dict) -> str:
    header = ("# Generated from the step declarations in tasks/pipeline.py (`al round` keeps it in sync):\n"
              "# each stage runs `al stage NAME`, the same code as the Prefect round flow.\n")
    return header + yaml.safe_dump(document, sort_keys=False)


def _stage(step: Step, root: Path, held_out: bool) -> dict:
    stage: dict = {"cmd": f"al stage {step.name}"}
    if step.help:
        stage["desc"] = step.help
    code = [_code_path(p, root) for p in step.code_files()]
    deps = list(step.deps) + code
    if deps:
        stage["deps"] = deps
    present = _params_present(root)
    # A key params.yaml leaves out takes its default from tasks/workspace.py (a code dependency of
    # every step); DVC would refuse to track a key the file lacks (MissingParamsError), so a
    # workspace made before a parameter existed keeps working.
    params: list = [p for p in step.params if present is None or p in present]
    if step.reads_round:
        params.append({ROUND_FILE: ["round"]})
    stage["params"] = params
    for kind in ("outs", "metrics", "plots"):
        entries = [_out_entry(o, held_out) for o in step.outs if o.kind == kind]
        if entries:
            stage[kind] = entries
    return stage


def _out_entry(out: Output, held_out: bool):
    options: dict = {}
    if not out.cache:
        options["cache"] = False
    if out.persist:
        options["persist"] = True
    if out.plot:
        accuracy = "test_accuracy" if held_out else "val_accuracy"
        options.update({**out.plot, "y": accuracy, "y_label": accuracy.replace("_", " ")})
    return {out.path: options} if options else out.path


def _code_path(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# --- code dependencies ----------------------------------------------------------------------------


def _import_closure(modules: tuple[str, ...]) -> set[Path]:
    """Files of ``modules`` and of every project module they import, transitively (static: no import)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_project_imports(name))
    return {f for name in seen for f in [_module_file(name)] if f is not None}


def _module_file(name: str) -> Path | None:
    base = CODE_ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=None)
def _project_imports(name: str) -> tuple[str, ...]:
    """Project modules imported anywhere in module ``name`` (top level or inside functions), plus
    the packages that contain them (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    path = _module_file(name)
    if path is None:
        return ()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in (*parts, base) if p)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    modules = {m for m in found if m.split(".")[0] in PROJECT_PACKAGES and _module_file(m) is not None}
    parents = {".".join(m.split(".")[:i]) for m in modules for i in range(1, m.count(".") + 1)}
    return tuple(sorted(modules | {p for p in parents if _module_file(p) is not None}))
