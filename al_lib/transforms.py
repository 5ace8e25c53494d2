"""Input transforms of a model: resize policy, channels, normalisation and training augmentation.

A :class:`TransformPolicy` is built from a config mapping (the ``transforms`` section of a model's
config) and gives two callables:

- :meth:`TransformPolicy.eval_transform`: decoded PIL image → float32 tensor ``[C, H, W]``, the
  network's input. Deterministic: used for training, validation and scoring alike.
- :meth:`TransformPolicy.augmentation`: tensor ``[C, H, W]`` (the eval transform's output) →
  augmented tensor of the same shape, for training samples only (``al_lib.training.fit(...,
  augment=...)``). It undoes the normalisation, applies the torchvision ``transforms.v2`` ops
  (flip, crop, rotation, colour jitter) on [0, 1] pixels, and normalises again.

The v2 ops draw from torch's *global* RNG; :func:`al_lib.training.fit` applies the augmentation
while iterating its loader inside :func:`al_lib.seeding.isolated_torch_rng`, so the same ``fit``
seed gives the same augmented batches and the caller's RNG is untouched.

torchvision is imported only when a policy needs it (normalisation, channel expansion or
augmentation): a plain resize keeps ``import al_lib.transforms`` and its transform torch-only.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps

from al_lib.data.images import image_to_tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "RESIZE_POLICIES",
    "Augmentation",
    "ConfigError",
    "ResizeToTensor",
    "TransformPolicy",
]

#: ImageNet channel statistics (RGB), the normalisation of every torchvision classification model.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Named normalisations: ``(mean, std)`` per channel, or None (pixels stay in [0, 1]).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "none": None,
}
#: ``stretch``: resize to exactly H x W (aspect ratio not kept); ``crop``: scale the shorter side
#: to fit, then centre-crop to H x W (aspect ratio kept, borders lost).
RESIZE_POLICIES = ("stretch", "crop")
_AUGMENT_KEYS = ("hflip", "vflip", "crop_padding", "scale", "rotation", "color_jitter")
_JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


class ConfigError(ValueError):
    """A bad model or transform config value; ``key`` is its dotted path, e.g. ``transforms.resize``."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.reason = message
        super().__init__(f"{key!r} {message}")


def _probability(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ConfigError(key, f"must be a probability in [0, 1], got {value!r}")
    return float(value)


def _non_negative(key: str, value: Any, kind: type = float) -> float:
    ok_type = numbers.Integral if kind is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, ok_type) or value < 0:
        raise ConfigError(key, f"must be a{'n integer' if kind is int else ' number'} >= 0, got {value!r}")
    return kind(value)


def _mapping(key: str, value: Any) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {value!r}")
    return value


def _no_unknown(key: str, config: Mapping, known: Sequence[str]) -> None:
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"is not a known key (known: {', '.join(known)})")


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation settings (all off by default).

    Attributes
    ----------
    hflip, vflip : float, probability of a horizontal / vertical flip.
    crop_padding : int, pad each side by this many pixels (zeros), then crop H x W at random.
    scale : (float, float) or None, random resized crop: a crop of this fraction range of the
        image area (aspect ratio 3/4 to 4/3) resized back to H x W.
    rotation : float, random rotation by up to this many degrees either way.
    color_jitter : (brightness, contrast, saturation, hue), each a non-negative strength (hue
        at most 0.5); None: no jitter.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    crop_padding: int = 0
    scale: tuple[float, float] | None = None
    rotation: float = 0.0
    color_jitter: tuple[float, float, float, float] | None = None

    @classmethod
    def from_config(cls, config: Mapping | None, key: str = "transforms.augment") -> Augmentation:
        """Validate a mapping such as ``{hflip: 0.5, crop_padding: 4, color_jitter: 0.2}``.

        ``color_jitter`` is a number (brightness, contrast and saturation strength) or a mapping
        with keys brightness, contrast, saturation, hue. Raises :class:`ConfigError` naming the key.
        """
        config = _mapping(key, config)
        _no_unknown(key, config, _AUGMENT_KEYS)
        out: dict[str, Any] = {}
        for name in ("hflip", "vflip"):
            if name in config:
                out[name] = _probability(f"{key}.{name}", config[name])
        if "crop_padding" in config:
            out["crop_padding"] = int(_non_negative(f"{key}.crop_padding", config["crop_padding"], int))
        if "rotation" in config:
            out["rotation"] = _non_negative(f"{key}.rotation", config["rotation"])
        if config.get("scale") is not None:
            scale = config["scale"]
            if (not isinstance(scale, Sequence) or isinstance(scale, str) or len(scale) != 2
                    or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in scale)
                    or not 0 < scale[0] <= scale[1] <= 1):
                raise ConfigError(f"{key}.scale", f"must be [low, high] with 0 < low <= high <= 1, got {scale!r}")
            out["scale"] = (float(scale[0]), float(scale[1]))
        jitter = config.get("color_jitter")
        if jitter is not None:
            jkey = f"{key}.color_jitter"
            if isinstance(jitter, Mapping):
                _no_unknown(jkey, jitter, _JITTER_KEYS)
                values = tuple(_non_negative(f"{jkey}.{k}", jitter.get(k, 0.0)) for k in _JITTER_KEYS)
            else:
                strength = _non_negative(jkey, jitter)
                values = (strength, strength, strength, 0.0)
            if values[3] > 0.5:
                raise ConfigError(f"{jkey}.hue", f"must be in [0, 0.5], got {values[3]!r}")
            if any(values):
                out["color_jitter"] = values
        return cls(**out)

    @property
    def enabled(self) -> bool:
        return bool(self.hflip or self.vflip or self.crop_padding or self.scale or self.rotation
                    or self.color_jitter)

    def ops(self, size: tuple[int, int]) -> list:
        """The torchvision ``transforms.v2`` ops on [0, 1] tensors ``[C, H, W]`` of ``size`` (H, W)."""
        from torchvision.transforms import v2

        ops: list = []
        if self.scale is not None:
            ops.append(v2.RandomResizedCrop(size, scale=self.scale, antialias=True))
        if self.crop_padding:
            ops.append(v2.RandomCrop(size, padding=self.crop_padding))
        if self.rotation:
            ops.append(v2.RandomRotation(self.rotation))
        if self.hflip:
            ops.append(v2.RandomHorizontalFlip(self.hflip))
        if self.vflip:
            ops.append(v2.RandomVerticalFlip(self.vflip))
        if self.color_jitter is not None:
            brightness, contrast, saturation, hue = self.color_jitter
            ops.append(v2.ColorJitter(brightness=brightness or None, contrast=contrast or None,
                                      saturation=saturation or None, hue=hue or None))
        return ops


class ResizeToTensor:
    """PIL image → float32 ``[C, H, W]`` in [0, 1] at the model's input size.

    Parameters
    ----------
    height, width : int, the output size.
    policy : {"stretch", "crop"}, see :data:`RESIZE_POLICIES`. Bilinear resampling; an image
        already ``width x height`` is not resampled.
    """

    def __init__(self, height: int, width: int, policy: str = "stretch") -> None:
        if policy not in RESIZE_POLICIES:
            raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
        self.size = (int(width), int(height))
        self.policy = policy

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != self.size:
            if self.policy == "crop":
                image = ImageOps.fit(image, self.size, method=Image.Resampling.BILINEAR)
            else:
                image = image.resize(self.size, Image.Resampling.BILINEAR)
        return image_to_tensor(image)

    def __repr__(self) -> str:
        return f"ResizeToTensor(size={self.size[1]}x{self.size[0]}, policy={self.policy!r})"


@dataclass(frozen=True)
class TransformPolicy:
    """How images become a network's input, and how training samples are augmented.

    Attributes
    ----------
    size : (height, width), the network's input size.
    channels : int, channels the images are decoded to (1: greyscale, 3: RGB).
    network_channels : int, channels the network takes; 3 with ``channels == 1`` replicates the
        grey channel (torchvision's ``v2.RGB``).
    resize : {"stretch", "crop"}
    mean, std : tuple of float (one per network channel) or None: no normalisation.
    augment : :class:`Augmentation`
    """

    size: tuple[int, int]
    channels: int = 1
    network_channels: int = 1
    resize: str = "stretch"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: Augmentation = field(default_factory=Augmentation)

    @classmethod
    def from_config(cls, config: Mapping | None, *, input_shape: Sequence[int], network_channels: int | None = None,
                    default_normalize: str = "none", key: str = "transforms") -> TransformPolicy:
        """Validate a ``transforms`` mapping and build the policy.

        Parameters
        ----------
        config : mapping or None, keys ``resize`` (see :data:`RESIZE_POLICIES`, default
            "stretch"), ``normalize`` (a name of :data:`NORMALIZATIONS` or ``{mean: [...], std:
            [...]}``, one value or one per network channel; default ``default_normalize``) and
            ``augment`` (see :meth:`Augmentation.from_config`).
        input_shape : (channels, height, width) of the decoded images.
        network_channels : int, channels the network takes (default: the images' channels).
        default_normalize : the normalisation when ``config`` names none (the architecture
            family's: "imagenet" for torchvision models).
        key : the config's name in error messages.

        Raises
        ------
        ConfigError
            Naming the key (e.g. ``transforms.normalize.std``) and the bad value.
        """
        config = _mapping(key, config)
        _no_unknown(key, config, ("resize", "normalize", "augment"))
        channels, height, width = (int(v) for v in input_shape)
        network_channels = channels if network_channels is None else int(network_channels)
        if network_channels != channels and (channels, network_channels) != (1, 3):
            raise ConfigError("input_shape", f"has {channels} channels; the network takes {network_channels}")
        resize = config.get("resize", "stretch")
        if resize not in RESIZE_POLICIES:
            raise ConfigError(f"{key}.resize", f"must be one of {list(RESIZE_POLICIES)}, got {resize!r}")
        mean, std = _normalization(config.get("normalize", default_normalize), network_channels, f"{key}.normalize")
        augment = Augmentation.from_config(config.get("augment"), f"{key}.augment")
        return cls((height, width), channels, network_channels, resize, mean, std, augment)

    @property
    def needs_torchvision(self) -> bool:
        return self.mean is not None or self.network_channels != self.channels or self.augment.enabled

    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image (already in the decode mode: "L" for 1 channel, "RGB" for 3) → float32
        ``[network_channels, H, W]``: resized, channels expanded, normalised."""
        resize = ResizeToTensor(*self.size, policy=self.resize)
        if self.mean is None and self.network_channels == self.channels:
            return resize
        from torchvision.transforms import v2

        ops: list = [resize]
        if self.network_channels != self.channels:
            ops.append(v2.RGB())
        if self.mean is not None:
            ops.append(v2.Normalize(self.mean, self.std))
        return v2.Compose([*ops, v2.ToPureTensor()])

    def augmentation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Training augmentation of :meth:`eval_transform`'s output ``[C, H, W]`` (same shape and
        normalisation), or None when no augmentation is configured. Draws from torch's global
        RNG: run it under :func:`al_lib.seeding.isolated_torch_rng` (``fit`` does)."""
        if not self.augment.enabled:
            return None
        from torchvision.transforms import v2

        ops = self.augment.ops(self.size)
        if self.mean is not None:
            mean, std = torch.tensor(self.mean), torch.tensor(self.std)
            ops = [v2.Normalize((-mean / std).tolist(), (1 / std).tolist()), *ops, v2.Normalize(self.mean, self.std)]
        return v2.Compose([*ops, v2.ToPureTensor()])


def _normalization(value: Any, channels: int, key: str) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``(mean, std)`` with one value per channel, or ``(None, None)``; ConfigError naming ``key``."""
    if isinstance(value, str):
        if value not in NORMALIZATIONS:
            raise ConfigError(key, f"must be one of {list(NORMALIZATIONS)} or {{mean: [...], std: [...]}}, got {value!r}")
        stats = NORMALIZATIONS[value]
        if stats is None:
            return None, None
        if channels != len(stats[0]):
            raise ConfigError(key, f"{value!r} has {len(stats[0])} channels; the network takes {channels}")
        return stats
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be one of {list(NORMALIZATIONS)} or {{mean: [...], std: [...]}}, got {value!r}")
    _no_unknown(key, value, ("mean", "std"))
    out = []
    for name in ("mean", "std"):
        stats = value.get(name)
        stats = [stats] if isinstance(stats, numbers.Real) and not isinstance(stats, bool) else stats
        if (not isinstance(stats, Sequence) or isinstance(stats, str) or len(stats) not in (1, channels)
                or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in stats)):
            raise ConfigError(f"{key}.{name}", f"must be a number or {channels} numbers (one per channel), got {stats!r}")
        if name == "std" and not all(s > 0 for s in stats):
            raise ConfigError(f"{key}.std", f"must be > 0, got {stats!r}")
        out.append(tuple(float(s) for s in stats) * (channels if len(stats) == 1 else 1))
    return out[0], out[1]
