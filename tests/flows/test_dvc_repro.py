"""`dvc repro` and the Prefect flow are one pipeline: real DVC, real git, the same step code.

The flow's round N runs the steps of tasks/pipeline.py and records each in ``dvc.lock``; ``dvc
repro`` runs the same steps (``al stage NAME``) for the round named in ``round.yaml``. So after
flow rounds DVC finds nothing to do, a changed param re-runs exactly the steps that read it in
either entry point, and recomputing a round from scratch exports exactly the flow's queries:
every random draw is seeded by (seed, round, step).

DVC commands in one repository must not overlap: every call here is sequential.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dvc.api
import numpy as np
import pandas as pd
import pytest
import yaml

from flows.round import al_round
from tasks import dvc_repo, git_repo, pipeline
from tasks.create import create_workspace
from tasks.demo import prepare_demo_workspace
from tasks.pipeline import dvc_yaml, render_dvc_yaml, write_dvc_yaml
from tasks.workspace import LABELS, MANIFEST, ORACLE_LABELS, ParamsError, Workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SMALL = dict(query_size=5, mc_iterations=3, pool_subsample=60, initial_labels=10,
             training={"max_epochs": 3, "patience": 2, "val_fraction": 0.2, "batch_size": 16})
STAGES = ("validate", "train", "score", "query")


def run_dvc(repo: Path, *args: str) -> str:
    """Run the venv's ``dvc`` in ``repo`` (``al`` on PATH for the stage commands); stdout + stderr."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed ({proc.returncode}):\n{output}"
    return output


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def copy_workspace(src: Path, dst: Path) -> Workspace:
    """A private copy of a workspace (git history, DVC cache and all), with a git identity for `dvc exp`."""
    shutil.copytree(src, dst, symlinks=True)
    for key, value in (("user.name", "al-tests"), ("user.email", "al-tests@localhost")):
        subprocess.run(["git", "config", key, value], cwd=dst, check=True)
    return Workspace(dst)


def set_param(ws: Workspace, **values) -> None:
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, **values}, sort_keys=False))


@pytest.fixture(scope="module")
def flow_ws(tmp_path_factory, mnist_pngs, prefect_api):
    """Workspace A: two simulated rounds through the Prefect flow; the labels text after each round."""
    ws = create_workspace(tmp_path_factory.mktemp("flow") / "ws", images=mnist_pngs, labels="oracle",
                          holdout=20, **SMALL)
    labels_at = {}
    for n in (0, 1):
        assert al_round(str(ws.root), simulate=True)["round"] == n
        labels_at[n] = ws.path(LABELS).read_text()
    return ws, labels_at


def test_after_flow_rounds_dvc_is_up_to_date_and_repro_does_nothing(flow_ws, tmp_path, dvc_status):
    ws = copy_workspace(flow_ws[0].root, tmp_path / "ws")
    assert dvc_status(ws.root) == {}
    output = run_dvc(ws.root, "repro")
    assert stages_run(output) == [] and "Data and pipelines are up to date" in output
    assert git_repo.is_clean(ws.root)


@pytest.fixture(scope="module")
def repro_ws(flow_ws, tmp_path_factory):
    """Workspace B: a copy of A whose round 1 ``dvc repro --force`` recomputed; returns (B, dvc's output)."""
    ws = copy_workspace(flow_ws[0].root, tmp_path_factory.mktemp("repro") / "ws")
    return ws, run_dvc(ws.root, "repro", "--force")


def test_dvc_repro_recomputes_the_flows_round_exactly(flow_ws, repro_ws, dvc_status):
    (flow, _), (ws, output) = flow_ws, repro_ws
    assert stages_run(output) == list(STAGES)
    assert not re.search(r"\b(WARNING|ERROR)\b", output), output
    # Same images, seed and round-1 labels: the same queries in the same order; scores agree to
    # float rounding (two processes on a loaded machine may differ in the last digits).
    ours, theirs = (pd.read_csv(w.query_paths(1)[0], dtype={"id": str}) for w in (ws, flow))
    assert ours[["id", "rank", "predicted_label"]].equals(theirs[["id", "rank", "predicted_label"]])
    np.testing.assert_allclose(ours[["score", "predicted_prob"]], theirs[["score", "predicted_prob"]], rtol=1e-3)
    # metrics/rounds.csv persists: the learning curve keeps round 0, round 1 is recomputed.
    rounds = pd.read_csv(ws.path("metrics/rounds.csv"))
    pd.testing.assert_frame_equal(rounds, pd.read_csv(flow.path("metrics/rounds.csv")), rtol=1e-3)
    assert dvc_status(ws.root) == {}


def test_second_repro_with_nothing_changed_does_nothing(repro_ws):
    ws, _ = repro_ws
    output = run_dvc(ws.root, "repro")
    assert stages_run(output) == []
    assert "Data and pipelines are up to date" in output


def test_changing_query_size_reruns_only_the_query_step_through_dvc_repro(flow_ws, tmp_path):
    ws = copy_workspace(flow_ws[0].root, tmp_path / "ws")
    before = pd.read_csv(ws.query_paths(1)[0], dtype=str)
    set_param(ws, query_size=9)
    assert stages_run(run_dvc(ws.root, "repro")) == ["query"]
    after = pd.read_csv(ws.query_paths(1)[0], dtype=str)
    assert len(after) == 9
    assert after["id"].head(5).tolist() == before["id"].tolist()  # same scores: the top 5 stay on top


def test_changing_query_size_reruns_only_the_query_step_through_the_flow(flow_ws, tmp_path, dvc_status):
    ws = copy_workspace(flow_ws[0].root, tmp_path / "ws")
    tagged = git_repo.tag_commit(ws.root, "round-1")
    set_param(ws, query_size=9)
    # A finished round is not changed behind the annotators' back: it takes --rerun.
    skipped = al_round(str(ws.root))
    assert skipped["skipped"] and "query" in skipped["reason"] and "--rerun" in skipped["reason"]
    result = al_round(str(ws.root), rerun=True)
    assert result["round"] == 1 and result["steps_run"] == ["query"]
    assert len(pd.read_csv(ws.query_paths(1)[0])) == 9
    # The tag moved to the round's new state; the old one stays in history.
    assert git_repo.tag_commit(ws.root, "round-1") not in (None, tagged)
    assert tagged in git_repo.git(ws.root, "log", "--format=%H")
    assert dvc_status(ws.root) == {} and git_repo.is_clean(ws.root)
    # The other entry point agrees: nothing left for dvc repro.
    assert stages_run(run_dvc(ws.root, "repro")) == []


def test_editing_the_code_a_step_runs_invalidates_that_step_only(flow_ws, tmp_path, monkeypatch):
    """A copy of the project's code stands in for an edit, so the real checkout is never touched."""
    ws = copy_workspace(flow_ws[0].root, tmp_path / "ws")
    code = tmp_path / "code"
    for package in pipeline.PROJECT_PACKAGES:
        shutil.copytree(REPO_ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(pipeline, "CODE_ROOT", code)
    assert write_dvc_yaml(ws.root)  # the code deps now point at the copy
    assert str(code / "al_lib" / "training.py") in ws.path("dvc.yaml").read_text()
    for step in STAGES:
        dvc_repo.commit_stage(ws.root, step)
    assert all(dvc_repo.stage_changes(ws.root, step) == [] for step in STAGES)

    with open(code / "al_lib" / "export.py", "a") as source:
        source.write("\n# an edit of the query export\n")
    changed = {step: dvc_repo.stage_changes(ws.root, step) for step in STAGES}
    assert {step for step, reasons in changed.items() if reasons} == {"query"}
    assert "al_lib/export.py" in changed["query"][0]

    with open(code / "tasks" / "validation.py", "a") as source:
        source.write("\n# an edit of the validation rules\n")
    changed = {step: dvc_repo.stage_changes(ws.root, step) for step in STAGES}
    assert {step for step, reasons in changed.items() if reasons} == {"validate", "query"}
    assert "tasks/validation.py" in changed["validate"][0]

    # Every step reads params.yaml, whose training.* keys are checked against fit's options: an
    # edit of training invalidates them all, and says so.
    with open(code / "al_lib" / "training.py", "a") as source:
        source.write("\n# an edit of training\n")
    changed = {step: dvc_repo.stage_changes(ws.root, step) for step in STAGES}
    assert all(reasons for reasons in changed.values())
    assert "al_lib/training.py" in " ".join(changed["validate"])


def test_dvc_exp_run_sets_a_parameter(repro_ws, tmp_path):
    ws = copy_workspace(repro_ws[0].root, tmp_path / "ws")
    output = run_dvc(ws.root, "exp", "run", "-S", "query_size=7")
    assert stages_run(output) == ["query"]
    assert len(pd.read_csv(ws.query_paths(1)[0])) == 7

    (name,) = run_dvc(ws.root, "exp", "list", "--name-only").split()
    assert dvc.api.params_show(repo=str(ws.root), rev=name)["query_size"] == 7
    at_exp = dvc.api.read("data/queries/round-1.csv", repo=str(ws.root), rev=name)
    assert len(at_exp.splitlines()) == 1 + 7


def test_plots_show_renders_the_learning_curve_over_rounds(flow_ws, tmp_path):
    ws, _ = flow_ws
    run_dvc(ws.root, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    spec = json.loads(re.search(r"var spec = (\{.*?\});\n", html, re.S).group(1))
    rows = spec["data"]["values"]
    assert [int(r["round"]) for r in rows] == [0, 1]
    assert [int(r["n_labelled"]) for r in rows] == [10, 15]
    assert spec["encoding"]["x"]["field"] == "n_labelled"
    assert "test_accuracy" in json.dumps(spec["layer"])


def test_dvc_api_reads_each_rounds_labels(flow_ws):
    ws, labels_at = flow_ws
    for n, text in labels_at.items():
        assert dvc.api.read(LABELS, repo=str(ws.root), rev=f"round-{n}") == text
    assert labels_at[0] != labels_at[1]


# --------------------------------------------------------------------------- the repo-root demo


def test_repo_root_dvc_yaml_is_generated_from_the_step_declarations():
    on_disk = (REPO_ROOT / "dvc.yaml").read_text()
    assert on_disk == render_dvc_yaml(dvc_yaml(REPO_ROOT, prepare=True)), (
        "dvc.yaml is stale: regenerate it with "
        "`.venv/bin/python -c 'from tasks.pipeline import write_dvc_yaml; write_dvc_yaml(\".\")'`")
    assert "al_lib/training.py" in yaml.safe_load(on_disk)["stages"]["train"]["deps"]
    assert Workspace(REPO_ROOT).params().classes == [str(d) for d in range(10)]


def test_dvc_repro_prepare_materialises_the_demo_pool_deterministically(tmp_path):
    repo = _demo_clone(tmp_path / "demo")
    output = run_dvc(repo, "repro", "prepare")
    assert stages_run(output) == ["prepare"]
    ws = Workspace(repo)
    manifest = ws.manifest()
    assert (manifest["split"] == "test").sum() == 15 and (manifest["split"] == "").sum() == 40
    assert len(list(ws.path("data/pool/images").glob("*.png"))) == 55
    labels = ws.labels()
    assert labels.groupby("source").size().to_dict() == {"import": 15, "random": 6}
    truth = ws.oracle_labels().set_index("id")["label"]
    assert (labels.set_index("id")["label"] == truth.loc[labels["id"]]).all()
    assert set(truth) <= {"0", "1", "2"} and len(truth) == 55

    # The same files again, from a fresh copy of the same params.
    twin = Workspace(_demo_clone(tmp_path / "twin"))
    prepare_demo_workspace(twin)
    for rel in (MANIFEST, ORACLE_LABELS, *manifest["path"]):
        assert twin.path(rel).read_bytes() == ws.path(rel).read_bytes(), rel
    assert twin.labels().drop(columns="labelled_at").equals(labels.drop(columns="labelled_at"))


@pytest.mark.parametrize("section,needle", [
    ({"n_pool": 0}, "prepare.n_pool"),
    ({"n_test": -1}, "prepare.n_test"),
    ({"n_images": 5}, "prepare.n_images"),
])
def test_bad_prepare_params_are_refused_naming_the_field(tmp_path, section, needle):
    ws = Workspace(_demo_clone(tmp_path / "demo", git=False))
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, "prepare": section}))
    assert ws.params().query_size == 20  # the round's parameters ignore the prepare section
    with pytest.raises(ParamsError, match=needle):
        prepare_demo_workspace(ws)


def test_demo_classes_must_be_digits(tmp_path):
    ws = Workspace(_demo_clone(tmp_path / "demo", git=False))
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, "classes": ["cat", "dog"]}))
    with pytest.raises(ParamsError, match="MNIST digits"):
        prepare_demo_workspace(ws)
    assert not ws.path(MANIFEST).exists()


def _demo_clone(path: Path, *, git: bool = True) -> Path:
    """A fresh git repository holding the root demo's DVC files, with small prepare params."""
    path.mkdir()
    if git:
        subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    for rel in ("params.yaml", "round.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"):
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / rel, path / rel)
    write_dvc_yaml(path, prepare=True)  # its code deps: this checkout's files, by absolute path
    params = yaml.safe_load((path / "params.yaml").read_text())
    params.update(classes=["0", "1", "2"], initial_labels=6, prepare={"n_pool": 40, "n_test": 15})
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path
