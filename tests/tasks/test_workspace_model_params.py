"""params.yaml's ``model:`` section: every key checked by parse_params, before anything runs."""

from pathlib import Path

import pytest

from tasks.workspace import ParamsError, model_spec, parse_params

BASE = {"classes": ["a", "b", "c"], "mc_iterations": 4}


def _parse(tmp_path: Path, **model):
    return parse_params({**BASE, "model": {"name": "gal_cnn", "input_shape": [1, 8, 8], **model}},
                        tmp_path / "params.yaml")


@pytest.mark.parametrize("model, field, value", [
    ({"name": "resnet1000"}, "model.name", "resnet1000"),
    ({"name": "mine:build"}, "model.name", "cannot import 'mine'"),
    ({"input_shape": [2, 8, 8]}, "model.input_shape", "[2, 8, 8]"),
    ({"hiden": 4}, "model.hiden", "not an option"),
    ({"mc": "laplace"}, "model.mc", "laplace"),
    ({"head_dropout": -0.1}, "model.head_dropout", "-0.1"),
    ({"freeze_backbone": 1}, "model.freeze_backbone", "1"),
    ({"weights": "models/pretrained.pt"}, "model.weights", "models/pretrained.pt"),
    ({"transforms": {"augment": {"vflip": "often"}}}, "model.transforms.augment.vflip", "often"),
    ({"transforms": {"normalize": "imagenet"}}, "model.transforms.normalize", "3 channels"),
])
def test_bad_model_keys_are_named(tmp_path, model, field, value):
    with pytest.raises(ParamsError) as info:
        _parse(tmp_path, **model)
    message = str(info.value)
    assert str(tmp_path / "params.yaml") in message and f"'{field}'" in message and value in message


def test_ensemble_needs_one_mc_iteration_per_member(tmp_path):
    with pytest.raises(ParamsError, match="'mc_iterations' must equal model.ensemble_size \\(5"):
        _parse(tmp_path, mc="ensemble")
    params = _parse(tmp_path, mc="ensemble", ensemble_size=4)
    assert model_spec(params, tmp_path).ensemble_size == 4


def test_workspace_files_are_relative_to_the_workspace(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "__init__.py").write_text("")
    (tmp_path / "nets" / "tiny.py").write_text(
        "from torch import nn\n"
        "def build(n_classes, input_shape):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes))\n")
    (tmp_path / "w.pt").write_bytes(b"")
    params = _parse(tmp_path, name="nets.tiny:build", weights="w.pt")
    spec = model_spec(params, tmp_path)
    assert spec.kind == "entry_point" and spec.weights_path() == tmp_path / "w.pt"


def test_torchvision_model_defaults(tmp_path):
    params = _parse(tmp_path, name="resnet18", input_shape=[1, 16, 16])
    spec = model_spec(params, tmp_path)
    assert spec.network_input_shape == (3, 16, 16) and spec.transforms.mean is not None
    assert spec.mc == "dropout" and spec.head_dropout == 0.5 and not spec.freeze_backbone
