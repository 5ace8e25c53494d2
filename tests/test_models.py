import pytest
import torch
from torch import nn

from al_lib import models
from al_lib.models import VGG16_CONFIG, GalCNN, VGGNet, build_model, vgg16_bn

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
