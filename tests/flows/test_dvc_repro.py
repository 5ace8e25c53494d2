"""`dvc repro` on real workspaces: real DVC, real git, the same step code as the Prefect flow.

What "the same round" means: the flow's round N is ingest -> snapshot (git tag ``round-N``) ->
train -> score -> query. A ``dvc repro`` stage works on the round of the latest labelled
snapshot (``tasks.stages.stage_round``: the latest tag, 0 before the first). So on a copy of a
workspace whose round N the flow ran (same images, params, seed and the labels tagged
``round-N``), ``dvc repro`` recomputes round N from scratch and must export exactly the
queries the flow exported: every random draw is seeded by (seed, round, step).

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
from tasks import versioning
from tasks.create import create_workspace, dvc_stages
from tasks.demo import PREPARE_STAGE, prepare_demo_workspace
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


@pytest.fixture(scope="module")
def repro_ws(flow_ws, tmp_path_factory):
    """Workspace B: a copy of A at round 1 without the flow's model, scores, metrics and round-1
    queries, recomputed by ``dvc repro``; returns (B, dvc's output)."""
    ws = copy_workspace(flow_ws[0].root, tmp_path_factory.mktemp("repro") / "ws")
    for rel in ("models", "data/scores", "metrics/train.json", *ws.query_paths(1)):
        path = ws.path(str(rel))
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return ws, run_dvc(ws.root, "repro")


def test_dvc_repro_recomputes_the_flows_round_exactly(flow_ws, repro_ws):
    (flow, _), (ws, output) = flow_ws, repro_ws
    assert stages_run(output) == list(STAGES)
    assert not re.search(r"\b(WARNING|ERROR)\b", output), output
    # Same images, seed and round-1 labels: the same queries in the same order; scores agree to
    # float rounding (two processes on a loaded machine may differ in the last digits).
    ours, theirs = (pd.read_csv(w.query_paths(1)[0], dtype={"id": str}) for w in (ws, flow))
    assert ours[["id", "rank", "predicted_label"]].equals(theirs[["id", "rank", "predicted_label"]])
    np.testing.assert_allclose(ours[["score", "predicted_prob"]], theirs[["score", "predicted_prob"]], rtol=1e-3)
    # metrics/rounds.csv persists: the learning curve keeps round 0, round 1 is recomputed.
    rounds = pd.read_csv(ws.path("metrics/rounds.csv")).drop(columns="train_seconds")
    pd.testing.assert_frame_equal(rounds, pd.read_csv(flow.path("metrics/rounds.csv")).drop(columns="train_seconds"))
    assert versioning.dvc_status(ws.root) == {}


def test_second_repro_with_nothing_changed_does_nothing(repro_ws):
    ws, _ = repro_ws
    output = run_dvc(ws.root, "repro")
    assert stages_run(output) == []
    assert "Data and pipelines are up to date" in output
    assert versioning.dvc_status(ws.root) == {}


def test_changing_query_size_reruns_only_the_query_stage(repro_ws, tmp_path):
    ws = copy_workspace(repro_ws[0].root, tmp_path / "ws")
    before = pd.read_csv(ws.query_paths(1)[0], dtype=str)
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, "query_size": 9}, sort_keys=False))

    assert stages_run(run_dvc(ws.root, "repro")) == ["query"]
    after = pd.read_csv(ws.query_paths(1)[0], dtype=str)
    assert len(after) == 9
    assert after["id"].head(5).tolist() == before["id"].tolist()  # same scores: the top 5 stay on top


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


def test_repo_root_dvc_yaml_is_the_workspace_pipeline_with_prepare():
    on_disk = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    assert on_disk == dvc_stages(prepare=PREPARE_STAGE)
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
    for rel in ("params.yaml", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore"):
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / rel, path / rel)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params.update(classes=["0", "1", "2"], initial_labels=6, prepare={"n_pool": 40, "n_test": 15})
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path
