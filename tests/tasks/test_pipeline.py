"""tasks/pipeline.py: the dvc.yaml generated from the step declarations."""

import subprocess
import sys
from pathlib import Path

import yaml

from tasks.pipeline import dvc_yaml, write_dvc_yaml

VENV_BIN = Path(sys.executable).parent


def _params_of(document: dict, stage: str) -> list:
    return [p for p in document["stages"][stage]["params"] if isinstance(p, str)]


def test_a_parameter_params_yaml_leaves_out_is_not_tracked(tmp_path):
    """A workspace made before a parameter existed (no ``calibration:`` key) keeps a dvc.yaml DVC
    accepts: the key takes its code default and is not declared; once written, it is tracked."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"classes": ["a", "b"], "seed": 0}))
    (tmp_path / "round.yaml").write_text("round: 0\n")
    assert "calibration" not in _params_of(dvc_yaml(tmp_path), "train")
    assert _params_of(dvc_yaml(tmp_path), "train")[:2] == ["classes", "seed"]

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    write_dvc_yaml(tmp_path, held_out=False)
    # the round records each step with `dvc commit` (tasks/dvc_repo.py), which refuses a declared key
    # the file lacks ("Parameters 'calibration' are missing from 'params.yaml'")
    stage = yaml.safe_load((tmp_path / "dvc.yaml").read_text())["stages"]["train"]
    for entry in stage["deps"] + stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
        rel = entry if isinstance(entry, str) else next(iter(entry))
        if not Path(rel).is_absolute():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("id,label\n" if rel.endswith(".csv") else "{}\n")
    commit = subprocess.run([str(VENV_BIN / "dvc"), "commit", "-f", "train"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PATH": str(VENV_BIN) + ":/usr/bin:/bin", "HOME": str(tmp_path),
                                            "DVC_NO_ANALYTICS": "1"})
    assert commit.returncode == 0, commit.stderr

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"classes": ["a", "b"], "seed": 0, "calibration": "none"}))
    assert "calibration" in _params_of(dvc_yaml(tmp_path), "train")


def test_without_params_yaml_every_declared_parameter_is_listed(tmp_path):
    assert "calibration" in _params_of(dvc_yaml(tmp_path), "train")
