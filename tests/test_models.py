import numpy as np
import pytest
import torch
from torch import nn

from al_lib import models
from al_lib.bayesian import ConsistentMCDropout, Ensemble, MCDropConnect
from al_lib.inference import predict_mc
from al_lib.models import VGG16_CONFIG, GalCNN, ModelSpec, VGGNet, build_model, find_head, has_dropout, vgg16_bn
from al_lib.seeding import isolated_torch_rng
from al_lib.training import fit
from al_lib.transforms import IMAGENET_MEAN, ConfigError

SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32)]
# Narrow VGGs keep the tests fast; vgg16_bn itself is built once per input shape.
SMALL_VGG = {"widths": (8, 16), "hidden": 16}


def _count(model, layer_type):
    return sum(isinstance(m, layer_type) for m in model.modules())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "name, kwargs",
    [("gal_cnn", {}), ("vgg", SMALL_VGG), ("vgg16_bn", {})],
)
def test_output_shapes(name, kwargs, shape):
    model = build_model(name, shape, 7, **kwargs)
    assert model(torch.zeros(3, *shape)).shape == (3, 7)


def test_gal_cnn_architecture():
    model = GalCNN((1, 28, 28), 10)
    assert _count(model, nn.Dropout) == 2
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (4, 4))] * 2
    # 28 -> 25 -> 22 -> pool 11: the dense layer sees 32 * 11 * 11 features.
    assert model.classifier[1].in_features == 32 * 11 * 11
    assert model.classifier[1].out_features == 128


def test_gal_cnn_rejects_too_small_input():
    with pytest.raises(ValueError, match="too small"):
        GalCNN((1, 6, 6))


def test_vgg_structure():
    model = VGGNet((3, 32, 32), 10, **SMALL_VGG)
    assert isinstance(model.features, nn.Sequential)
    kinds = [type(m) for m in model.classifier]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert _count(model.features, nn.BatchNorm2d) == 4
    assert _count(VGGNet((3, 32, 32), 10, batch_norm=False, **SMALL_VGG), nn.BatchNorm2d) == 0


def test_vgg16_bn_config_and_pool_skipping():
    model = vgg16_bn((3, 32, 32), 10)
    convs = [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)]
    assert convs == [c for c in VGG16_CONFIG if c != "M"]
    assert _count(model.features, nn.MaxPool2d) == 5
    # 8x8 reaches 1x1 after three pools: the last two are skipped.
    assert _count(vgg16_bn((1, 8, 8), 10).features, nn.MaxPool2d) == 3


def test_vgg_convs_per_block_sequence():
    model = VGGNet((3, 16, 16), 4, widths=(4, 8), convs_per_block=(1, 3), hidden=8)
    assert [m.out_channels for m in model.features if isinstance(m, nn.Conv2d)] == [4, 8, 8, 8]
    with pytest.raises(ValueError, match="entries"):
        VGGNet((3, 16, 16), 4, widths=(4, 8), convs_per_block=(1,))


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="gal_cnn.*vgg"):
        build_model("resnet", (1, 8, 8), 10)


@pytest.mark.parametrize("shape", [(1, 8), (0, 8, 8)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape"):
        build_model("gal_cnn", shape, 10)


def test_seed_determinism_leaves_global_rng_alone():
    before = torch.get_rng_state()
    a = build_model("gal_cnn", (1, 8, 8), 10, seed=3)
    b = build_model("gal_cnn", (1, 8, 8), 10, seed=3)
    c = build_model("gal_cnn", (1, 8, 8), 10, seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), key
    assert not torch.equal(a.classifier[1].weight, c.classifier[1].weight)


def test_weights_round_trip(tmp_path):
    path = tmp_path / "model.pt"
    source = build_model("vgg", (3, 8, 8), 5, seed=0, **SMALL_VGG)
    torch.save(source.state_dict(), path)
    loaded = build_model("vgg", (3, 8, 8), 5, seed=1, weights=path, **SMALL_VGG)
    for (key, x), y in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(x, y), key


def test_missing_weights_file(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        build_model("gal_cnn", (1, 8, 8), 10, weights=path)


def test_mismatched_weights(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(build_model("gal_cnn", (1, 8, 8), 3).state_dict(), path)
    with pytest.raises(ValueError, match="other.pt"):
        build_model("gal_cnn", (1, 8, 8), 10, weights=path)
    torch.save({"nonsense": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="(?s)other.pt.*Missing key"):
        build_model("gal_cnn", (1, 8, 8), 10, weights=path)


def test_unreadable_weights_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        build_model("gal_cnn", (1, 8, 8), 10, weights=path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="not a state dict"):
        build_model("gal_cnn", (1, 8, 8), 10, weights=path)


def test_models_registry_names():
    assert set(models.MODELS) == {"gal_cnn", "vgg", "vgg16_bn"}


# --- torchvision architectures, entry points, MC and frozen backbones (ModelSpec) -------------------

TINY_RGB = (1, 16, 16)  # greyscale images; torchvision networks take them as RGB


def _spec(**config):
    return ModelSpec.from_config({"name": "resnet18", "input_shape": list(TINY_RGB), **config})


@pytest.fixture(scope="module")
def imagenet_like_weights(tmp_path_factory):
    """A locally saved stock resnet18 state dict (1000-class head), as a pretrained file would be."""
    from torchvision.models import resnet18

    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    with isolated_torch_rng(123):
        torch.save(resnet18().state_dict(), path)
    return path


def test_torchvision_model_gets_a_new_head_and_mc_dropout():
    spec = _spec()
    assert spec.kind == "torchvision" and spec.network_input_shape == (3, 16, 16)
    assert spec.transforms.mean == IMAGENET_MEAN and spec.transforms.network_channels == 3
    model = spec.build(4, seed=0)
    path, head = find_head(model)
    assert path == "fc.1" and (head.in_features, head.out_features) == (512, 4)
    assert isinstance(model.fc[0], ConsistentMCDropout) and model.fc[0].p == 0.5  # resnet has no dropout
    assert list(model.modules())[-1] is head  # the model still ends in its nn.Linear head
    probs = predict_mc(model, torch.rand(5, 3, 16, 16), iterations=4, seed=0, progress=False)
    assert probs.shape == (5, 4, 4) and not np.allclose(probs[..., 0], probs[..., 1])
    again = spec.build(4, seed=0)
    for (key, x), y in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(x, y), key


def test_existing_dropout_is_kept_not_doubled():
    model = build_model("mobilenet_v3_small", (3, 32, 32), 3, head_dropout=0.5)
    assert has_dropout(model) and isinstance(model.classifier[-1], nn.Linear)
    assert _count(model, nn.Dropout) == 1
    assert _count(build_model("resnet18", (3, 16, 16), 3), nn.Dropout) == 0  # head_dropout=0: none added


def test_local_weights_load_the_backbone_and_replace_the_head(imagenet_like_weights):
    saved = torch.load(imagenet_like_weights, weights_only=True)
    model = _spec(weights=str(imagenet_like_weights)).build(3, seed=0)
    state = model.state_dict()
    for key, value in saved.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key
    assert state["fc.1.weight"].shape == (3, 512)
    # A workspace checkpoint of this spec (other head shape and keys) serves as weights too.
    checkpoint = imagenet_like_weights.parent / "checkpoint.pt"
    torch.save(model.state_dict(), checkpoint)
    reloaded = _spec(weights=str(checkpoint)).build(5, seed=1)
    assert torch.equal(reloaded.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_missing_weights_file_is_named(tmp_path):
    absent = tmp_path / "nowhere" / "resnet18.pt"
    with pytest.raises(ConfigError, match="nowhere/resnet18.pt") as info:
        _spec(weights=str(absent))
    assert info.value.key == "weights"
    with pytest.raises(FileNotFoundError, match="nowhere/resnet18.pt"):
        build_model("resnet18", TINY_RGB, 3, weights=absent)
    # Relative paths are relative to the root (the workspace); the spec checks before anything runs.
    with pytest.raises(ConfigError, match=str(tmp_path / "w.pt")):
        ModelSpec.from_config({"name": "resnet18", "input_shape": [3, 8, 8], "weights": "w.pt"}, root=tmp_path)


def test_weights_of_another_architecture_are_refused(imagenet_like_weights):
    with pytest.raises(ValueError, match="(?s)resnet18.pt.*Missing key"):
        build_model("resnet34", TINY_RGB, 3, weights=imagenet_like_weights)


def test_frozen_backbone_trains_only_the_head(imagenet_like_weights):
    model = _spec(weights=str(imagenet_like_weights), freeze_backbone=True).build(3, seed=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.1.weight", "fc.1.bias"}
    assert _count(model, nn.BatchNorm2d) == 0  # frozen: running statistics fixed in training too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = torch.utils.data.TensorDataset(torch.rand(12, 3, 16, 16), torch.arange(12) % 3)
    fit(model, data, max_epochs=2, batch_size=4, val_fraction=0, progress=False, device="cpu", seed=0)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.1.weight", "fc.1.bias"}


def test_dropconnect_head():
    model = _spec(mc="dropconnect", dropconnect=0.3).build(3, seed=0)
    assert isinstance(model.fc, MCDropConnect) and model.fc.p == 0.3
    assert not has_dropout(model)
    probs = predict_mc(model, torch.rand(4, 3, 16, 16), iterations=3, seed=0, progress=False)
    assert not np.allclose(probs[..., 0], probs[..., 1])


def test_ensemble_members_are_independent_and_seeded():
    spec = ModelSpec.from_config({"name": "gal_cnn", "input_shape": [1, 8, 8], "mc": "ensemble", "ensemble_size": 3})
    model = spec.build(4, seed=0)
    assert isinstance(model, Ensemble) and len(model) == 3
    weights = [m.classifier[-1].weight for m in model.members]
    assert not torch.equal(weights[0], weights[1])
    assert torch.equal(spec.build(4, seed=0).members[2].classifier[-1].weight, weights[2])
    probs = predict_mc(model, torch.rand(5, 1, 8, 8), iterations=3, seed=0, progress=False)
    assert probs.shape == (5, 4, 3) and not np.allclose(probs[..., 0], probs[..., 1])


ENTRY_MODULE = '''
from torch import nn

def small(n_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.ReLU(), nn.Linear(8, n_classes))

def broken(n_classes, input_shape):
    return nn.Linear(3, n_classes)

NOT_CALLABLE = 3
'''


def test_entry_point_from_the_users_code(tmp_path):
    (tmp_path / "my_nets.py").write_text(ENTRY_MODULE)
    spec = ModelSpec.from_config({"name": "my_nets:small", "input_shape": [1, 6, 6]}, root=tmp_path)
    assert spec.kind == "entry_point" and spec.transforms.mean is None
    model = spec.build(3, seed=0)
    assert isinstance(model[3], nn.Sequential) and isinstance(model[3][0], ConsistentMCDropout)  # added
    assert list(model.modules())[-1] is model[3][1] and model[3][1].out_features == 3
    assert model(torch.zeros(2, 1, 6, 6)).shape == (2, 3)


@pytest.mark.parametrize("name, match", [
    ("no_such_module:build", "cannot import 'no_such_module'"),
    ("my_nets:absent", "has no attribute 'absent'"),
    ("my_nets:NOT_CALLABLE", "not callable"),
    ("my nets:small", "package.module:function"),
])
def test_entry_point_errors(tmp_path, name, match):
    (tmp_path / "my_nets.py").write_text(ENTRY_MODULE)
    with pytest.raises(ConfigError, match=match) as info:
        ModelSpec.from_config({"name": name, "input_shape": [1, 6, 6]}, root=tmp_path)
    assert info.value.key == "name"


def test_entry_point_with_wrong_output_fails_at_build(tmp_path):
    (tmp_path / "my_nets.py").write_text(ENTRY_MODULE)
    with pytest.raises(ValueError, match="my_nets:broken.*fails on inputs"):
        build_model("my_nets:broken", (1, 6, 6), 3, search_path=tmp_path)


@pytest.mark.parametrize("config, key", [
    ({"name": "resnet19"}, "name"),
    ({"input_shape": [2, 8, 8]}, "input_shape"),
    ({"mc": "swag"}, "mc"),
    ({"head_dropout": 1.0}, "head_dropout"),
    ({"ensemble_size": 1, "mc": "ensemble"}, "ensemble_size"),
    ({"freeze_backbone": "yes"}, "freeze_backbone"),
    ({"name": "gal_cnn", "hiden": 4}, "hiden"),
    ({"transforms": {"resize": "pad"}}, "transforms.resize"),
])
def test_spec_errors_name_the_key(config, key):
    with pytest.raises(ConfigError) as info:
        ModelSpec.from_config({"name": "resnet18", "input_shape": [3, 8, 8], **config})
    assert info.value.key == key


def test_torchvision_options_pass_through_but_never_weights():
    model = build_model("mobilenet_v3_small", (3, 32, 32), 3, dropout=0.0, head_dropout=0.3)
    assert isinstance(model.classifier[-1], nn.Sequential)  # its dropout has rate 0: one is added
    assert model.classifier[-1][0].p == 0.3 and model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="rejected the options"):
        build_model("resnet18", TINY_RGB, 3, depth=3)
    with pytest.raises(ValueError, match="'num_classes' is set by build_model"):
        build_model("resnet18", TINY_RGB, 3, num_classes=3)
    with pytest.raises(FileNotFoundError, match="'DEFAULT' does not exist"):  # a path, never an enum to fetch
        build_model("resnet18", TINY_RGB, 3, weights="DEFAULT")
