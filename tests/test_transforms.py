import numpy as np
import pytest
import torch
from PIL import Image

from al_lib.seeding import isolated_torch_rng
from al_lib.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, Augmentation, ConfigError, ResizeToTensor, TransformPolicy,
)


def _grey(h=12, w=20):
    return Image.fromarray((np.arange(h * w).reshape(h, w) % 256).astype(np.uint8), "L")


def _policy(config=None, shape=(1, 8, 8), **kwargs):
    return TransformPolicy.from_config(config, input_shape=shape, **kwargs)


def test_plain_policy_is_a_resize_to_unit_range():
    transform = _policy().eval_transform()
    assert isinstance(transform, ResizeToTensor)  # no torchvision needed
    x = transform(_grey())
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    same = _grey(8, 8)
    np.testing.assert_array_equal(transform(same)[0].numpy(), (np.asarray(same) / np.float32(255)).astype(np.float32))


def test_crop_keeps_the_aspect_ratio():
    image = Image.new("L", (20, 10))
    image.paste(255, (0, 0, 5, 10))  # a white band on the left quarter
    stretched = _policy({"resize": "stretch"}, (1, 10, 10)).eval_transform()(image)
    cropped = _policy({"resize": "crop"}, (1, 10, 10)).eval_transform()(image)
    assert stretched.shape == cropped.shape == (1, 10, 10)
    assert stretched[0, :, 0].min() > 0.9  # squeezed: the band is still at the left edge
    assert cropped.max() < 0.1  # centre crop: the band is cut away


def test_grey_to_rgb_and_imagenet_normalisation():
    policy = _policy(None, (1, 8, 8), network_channels=3, default_normalize="imagenet")
    assert policy.mean == IMAGENET_MEAN and policy.std == IMAGENET_STD
    image = _grey(8, 8)
    x = policy.eval_transform()(image)
    assert type(x) is torch.Tensor and x.shape == (3, 8, 8)
    pixels = torch.from_numpy(np.asarray(image) / 255.0).float()
    for c in range(3):
        torch.testing.assert_close(x[c], (pixels - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


def test_custom_statistics_broadcast_to_channels():
    policy = _policy({"normalize": {"mean": 0.5, "std": [0.25]}}, (3, 4, 4))
    assert policy.mean == (0.5,) * 3 and policy.std == (0.25,) * 3
    x = policy.eval_transform()(Image.new("RGB", (4, 4), (255, 0, 127)))
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([2.0, -2.0, (127 / 255 - 0.5) / 0.25]))


AUGMENT = {"hflip": 0.5, "crop_padding": 2, "rotation": 10, "color_jitter": {"brightness": 0.3, "hue": 0.1}}


def test_augmentation_is_deterministic_given_the_seed_and_leaves_the_rng_alone():
    policy = _policy({"normalize": "imagenet", "augment": AUGMENT}, (3, 8, 8))
    x = policy.eval_transform()(Image.new("RGB", (8, 8), (200, 30, 90)))
    augment = policy.augmentation()
    before = torch.get_rng_state()

    def draws(seed):
        with isolated_torch_rng(seed):
            return torch.stack([augment(x) for _ in range(6)])

    a, b, c = draws(1), draws(1), draws(2)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == (6, 3, 8, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not all(torch.allclose(a[i], x) for i in range(6))


def test_flip_happens_in_pixel_space_and_keeps_the_normalisation():
    policy = _policy({"normalize": "imagenet", "augment": {"hflip": 1.0}}, (3, 4, 6))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8), "RGB")
    x = policy.eval_transform()(image)
    torch.testing.assert_close(policy.augmentation()(x), x.flip(-1), atol=1e-5, rtol=0)


def test_no_augmentation_configured():
    assert _policy({"augment": {"hflip": 0}}).augmentation() is None
    assert not Augmentation().enabled


@pytest.mark.parametrize("config, key", [
    ({"resize": "pad"}, "transforms.resize"),
    ({"normalize": "cifar"}, "transforms.normalize"),
    ({"normalize": {"mean": [0.5, 0.5], "std": 1}}, "transforms.normalize.mean"),
    ({"normalize": {"mean": 0.5, "std": 0}}, "transforms.normalize.std"),
    ({"augment": {"hflip": 2}}, "transforms.augment.hflip"),
    ({"augment": {"crop_padding": 1.5}}, "transforms.augment.crop_padding"),
    ({"augment": {"scale": [0.9, 0.5]}}, "transforms.augment.scale"),
    ({"augment": {"color_jitter": {"hue": 0.7}}}, "transforms.augment.color_jitter.hue"),
    ({"augment": {"mixup": 1}}, "transforms.augment.mixup"),
    ({"colour": 1}, "transforms.colour"),
    ("imagenet", "transforms"),
])
def test_bad_config_names_the_key(config, key):
    with pytest.raises(ConfigError) as info:
        _policy(config, (3, 8, 8))
    assert info.value.key == key
    assert key in str(info.value)


def test_imagenet_statistics_need_three_channels():
    with pytest.raises(ConfigError, match="3 channels"):
        _policy({"normalize": "imagenet"}, (1, 8, 8))
