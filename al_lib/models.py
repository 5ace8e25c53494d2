"""Reference models: the Gal et al. 2017 MNIST CNN and a VGG-style net with a dropout classifier.

Both return logits ``[B, n_classes]`` for inputs ``[B, *input_shape]`` and keep their dropout as
plain :class:`torch.nn.Dropout` layers, so :func:`al_lib.bayesian.patch_module` can turn them into
MC dropout. :func:`build_model` builds them by name, optionally from a seed (without touching the
caller's global RNG) and from a local weights file (nothing is ever downloaded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from al_lib.training import isolated_torch_rng

__all__ = [
    "VGG16_CONFIG",
    "GalCNN",
    "MODELS",
    "VGGNet",
    "build_model",
    "load_weights",
    "vgg16_bn",
]

#: VGG16 feature config (Simonyan & Zisserman 2015, configuration "D"): ints are conv widths,
#: ``"M"`` is a 2x2 max pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``input_shape`` as ``(channels, height, width)`` or raise ``ValueError``."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f"input_shape must be 3 positive ints (channels, height, width), got {input_shape!r}")
    return shape


class GalCNN(nn.Module):
    """The MNIST CNN of Gal, Islam & Ghahramani (2017), "Deep Bayesian Active Learning with Image Data".

    ``conv(channels, k) - ReLU - conv(channels, k) - ReLU - maxpool(2) - dropout(p0) - flatten -
    dense(hidden) - ReLU - dropout(p1) - dense(n_classes)``. Convolutions are unpadded, as in the
    paper's Keras model; the flatten size is computed from ``input_shape``, so 8x8 inputs
    (scikit-learn digits) work as well as 28x28.

    Parameters
    ----------
    input_shape : (channels, height, width)
    n_classes : int
    channels : int, filters of both convolutions.
    kernel_size : int, side of both (square) kernels.
    hidden : int, width of the dense layer.
    dropout : (float, float), rates after the pooling and after the dense layer.

    ``forward(x)``: ``x`` ``[B, *input_shape]`` → logits ``[B, n_classes]``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        n_classes: int = 10,
        *,
        channels: int = 32,
        kernel_size: int = 4,
        hidden: int = 128,
        dropout: Sequence[float] = (0.25, 0.5),
    ):
        super().__init__()
        in_channels, height, width = _check_input_shape(input_shape)
        if len(dropout) != 2:
            raise ValueError(f"dropout must be two rates (after pooling, after dense), got {dropout!r}")
        # Two unpadded convolutions shrink each side by kernel_size - 1, then the pool halves it.
        side_h, side_w = ((s - 2 * (kernel_size - 1)) // 2 for s in (height, width))
        if side_h < 1 or side_w < 1:
            raise ValueError(
                f"input {height}x{width} is too small for two {kernel_size}x{kernel_size} convolutions and a 2x2 pool"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(dropout[0]),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * side_h * side_w, hidden),
            nn.ReLU(),
            nn.Dropout(dropout[1]),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _vgg_config(widths: Sequence[int], convs_per_block: int | Sequence[int]) -> list[int | str]:
    """Expand block widths into a feature config: ``convs_per_block`` convs of each width, then ``"M"``."""
    counts = [convs_per_block] * len(widths) if isinstance(convs_per_block, int) else list(convs_per_block)
    if len(counts) != len(widths):
        raise ValueError(f"convs_per_block has {len(counts)} entries for {len(widths)} blocks")
    config: list[int | str] = []
    for width, count in zip(widths, counts):
        config += [width] * count + ["M"]
    return config


class VGGNet(nn.Module):
    """VGG-style network: blocks of conv3x3[-BN]-ReLU with max pooling, then a dropout MLP classifier.

    The seed study's model family (VGG16 with batch norm, see :func:`vgg16_bn`). A max pool is
    skipped once the spatial size has reached 1, so small inputs (8x8, 32x32) work with deep
    configs. An adaptive average pool brings the features to ``avgpool_size x avgpool_size``
    before the classifier, so the classifier size does not depend on the input size.

    Parameters
    ----------
    input_shape : (channels, height, width)
    n_classes : int
    widths : sequence of int, conv width of each block (ignored when ``config`` is given).
    convs_per_block : int or sequence of int, convs in each block (ignored when ``config`` is given).
    config : sequence of int or "M", optional
        Explicit feature config, e.g. :data:`VGG16_CONFIG`: ints are conv widths, ``"M"`` a max pool.
    batch_norm : bool, BatchNorm after every conv.
    hidden : int, width of the two hidden classifier layers.
    dropout : float, rate of both classifier dropouts.
    avgpool_size : int, side of the adaptive average pool output.

    Attributes
    ----------
    features : nn.Sequential, the convolutional part.
    avgpool : nn.AdaptiveAvgPool2d
    classifier : nn.Sequential ``(Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear)``.

    ``forward(x)``: ``x`` ``[B, *input_shape]`` → logits ``[B, n_classes]``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        n_classes: int = 10,
        *,
        widths: Sequence[int] = (64, 128, 256, 512),
        convs_per_block: int | Sequence[int] = 2,
        config: Sequence[int | str] | None = None,
        batch_norm: bool = True,
        hidden: int = 512,
        dropout: float = 0.5,
        avgpool_size: int = 1,
    ):
        super().__init__()
        in_channels, height, width = _check_input_shape(input_shape)
        config = list(config) if config is not None else _vgg_config(widths, convs_per_block)
        layers: list[nn.Module] = []
        for item in config:
            if item == "M":
                if min(height, width) >= 2:
                    layers.append(nn.MaxPool2d(2))
                    height, width = height // 2, width // 2
                continue
            if not isinstance(item, int) or item < 1:
                raise ValueError(f"config entries must be positive ints or 'M', got {item!r}")
            # The conv bias is redundant when BatchNorm follows (BN has its own shift).
            layers.append(nn.Conv2d(in_channels, item, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            in_channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(avgpool_size)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * avgpool_size * avgpool_size, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )
        self._init_conv_weights()

    def _init_conv_weights(self) -> None:
        # He init keeps activations from vanishing through 13 ReLU convs when batch_norm=False;
        # PyTorch's default conv init is scaled for a=sqrt(5) leaky ReLU and shrinks them.
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_bn(input_shape: Sequence[int] = (3, 32, 32), n_classes: int = 10, **kwargs) -> VGGNet:
    """VGG16 with batch norm (:data:`VGG16_CONFIG`); ``kwargs`` go to :class:`VGGNet`."""
    return VGGNet(input_shape, n_classes, config=VGG16_CONFIG, **kwargs)


#: Model factories by name, for configs: ``factory(input_shape, n_classes, **kwargs) -> nn.Module``.
MODELS = {"gal_cnn": GalCNN, "vgg": VGGNet, "vgg16_bn": vgg16_bn}


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a local state-dict file into ``model`` (strictly) and return ``model``.

    The file is read with ``weights_only=True`` (no arbitrary pickles) onto the CPU.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a readable state dict, or its keys or shapes do not match ``model``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for unreadable files
        raise ValueError(f"weights file {path!r} could not be read as a state dict: {err}") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"weights file {path!r} holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"weights file {path!r} does not match {type(model).__name__}: {err}") from err
    return model


def build_model(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    seed: int | None = None,
    **kwargs,
) -> nn.Module:
    """Build a model from :data:`MODELS` by name.

    Parameters
    ----------
    name : {"gal_cnn", "vgg", "vgg16_bn"}
    input_shape : (channels, height, width), a list is accepted (YAML configs).
    n_classes : int
    weights : path, optional
        Local state-dict file loaded with :func:`load_weights`.
    seed : int, optional
        When given, initialisation is deterministic: the model is constructed under torch's
        CPU RNG seeded with ``seed`` inside a fork, so the caller's global RNG is left untouched.
    **kwargs
        Passed to the model class (e.g. ``dropout``, ``hidden``, ``batch_norm``).

    Returns
    -------
    model : nn.Module on the CPU, in training mode, returning logits ``[B, n_classes]``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    factory = MODELS[name]
    shape = tuple(input_shape)
    if seed is None:
        model = factory(shape, n_classes, **kwargs)
    else:
        with isolated_torch_rng(seed):
            model = factory(shape, n_classes, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model
