"""Models: the Gal et al. 2017 MNIST CNN, a VGG-style net, torchvision architectures, your own.

The built-ins return logits ``[B, n_classes]`` for inputs ``[B, *input_shape]`` and keep their
dropout as plain :class:`torch.nn.Dropout` layers, so :func:`al_lib.bayesian.patch_module` can turn
them into MC dropout. :func:`build_model` builds a built-in, a torchvision classification
architecture (random init or a local weights file, with a new head for the classes) or a
``package.module:function`` entry point, optionally from a seed (without touching the caller's
global RNG); it adds dropout before the head where a model has none, MC DropConnect on the head,
or freezes the backbone. Nothing is ever downloaded. :class:`ModelSpec` is a validated model config
(params.yaml's ``model:``) with its input transforms (:mod:`al_lib.transforms`).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from al_lib.seeding import check_random_state, draw_seed, isolated_torch_rng
from al_lib.transforms import ConfigError, TransformPolicy

__all__ = [
    "MC_METHODS",
    "VGG16_CONFIG",
    "GalCNN",
    "MODELS",
    "ModelSpec",
    "VGGNet",
    "build_model",
    "find_head",
    "freeze_backbone",
    "load_weights",
    "model_kind",
    "network_input_shape",
    "read_state_dict",
    "resolve_entry_point",
    "torchvision_architectures",
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


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """Read a local state-dict file with ``weights_only=True`` (no arbitrary pickles) onto the CPU.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist (the message names it; nothing is ever downloaded).
    ValueError
        When the file is not a readable state dict.
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
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, *, skip_prefix: str | None = None) -> nn.Module:
    """Load a local state-dict file into ``model`` (strictly) and return ``model``.

    The file is read with :func:`read_state_dict`. With ``skip_prefix`` (a module path such as
    ``"fc"``), the keys of that module are ignored on both sides: the model's are left as they are
    and the file's may have any shape (a head for another number of classes).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is not a readable state dict, or its keys or shapes do not match ``model``.
    """
    state = read_state_dict(path)
    path = os.fspath(path)
    try:
        if skip_prefix is None:
            model.load_state_dict(state)
        else:
            inside = (lambda key: key.startswith(skip_prefix + "."))
            result = model.load_state_dict({k: v for k, v in state.items() if not inside(k)}, strict=False)
            missing = [k for k in result.missing_keys if not inside(k)]
            if missing or result.unexpected_keys:
                raise RuntimeError(f"Missing key(s): {missing}; unexpected key(s): {result.unexpected_keys}")
    except RuntimeError as err:
        raise ValueError(f"weights file {path!r} does not match {type(model).__name__}: {err}") from err
    return model


def model_kind(name: str) -> str:
    """``"builtin"`` (a name of :data:`MODELS`), ``"entry_point"`` (``package.module:function``)
    or ``"torchvision"`` (any other name, e.g. ``resnet18``, or ``torchvision/NAME`` to pick
    torchvision's model where a built-in has the same name, such as ``vgg16_bn``)."""
    if name in MODELS:
        return "builtin"
    if ":" in name:
        return "entry_point"
    return "torchvision"


def torchvision_architectures() -> list[str]:
    """The torchvision classification architectures (``torchvision.models.list_models``)."""
    from torchvision import models as tv_models

    return tv_models.list_models(module=tv_models)


def resolve_entry_point(name: str, search_path: str | os.PathLike | None = None):
    """The callable named ``package.module:function`` (dotted attributes allowed after the colon).

    ``search_path`` (the workspace root) is put first on ``sys.path`` while importing, so the
    user's own modules beside params.yaml are found.

    Raises
    ------
    ValueError
        When the name is malformed, the module cannot be imported (the message gives the import
        error) or the attribute is missing or not callable.
    """
    module_name, _, attr = name.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".") + attr.split(".")):
        raise ValueError(f"entry point {name!r} must look like 'package.module:function'")
    path = None if search_path is None else os.fspath(search_path)
    added = path is not None and path not in sys.path
    if added:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything at import
        where = f" (searched {path} and sys.path)" if path is not None else ""
        raise ValueError(f"entry point {name!r}: cannot import {module_name!r}{where}: "
                         f"{type(err).__name__}: {err}") from err
    finally:
        if added:
            sys.path.remove(path)
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"entry point {name!r}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"entry point {name!r} is a {type(target).__name__}, not callable")
    return target


def find_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(module path, layer)`` of the classifier head: the last :class:`torch.nn.Linear` in module
    order (``"fc"`` for a ResNet, ``"classifier.1"`` for EfficientNet, ``"heads.head"`` for ViT).

    Raises ``ValueError`` when the model has no Linear layer below its root.
    """
    linears = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.Linear) and path]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier head to replace or make stochastic")
    return linears[-1]


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, module)


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` has a dropout layer (plain or MC) with a rate above 0."""
    from al_lib.bayesian.dropout import DROPOUT_CLASSES, MCDropout

    return any((type(m) in DROPOUT_CLASSES or isinstance(m, MCDropout)) and getattr(m, "p", 0) > 0
               for m in model.modules())


def freeze_backbone(model: nn.Module, head: str) -> nn.Module:
    """Train the head only: every parameter outside module ``head`` stops requiring gradients and
    every BatchNorm2d outside it becomes a :class:`torchvision.ops.FrozenBatchNorm2d` (running
    statistics used and kept in training mode too). Returns ``model`` (changed in place)."""
    inside = (lambda name: name == head or name.startswith(head + "."))
    for name, parameter in model.named_parameters():
        if not inside(name):
            parameter.requires_grad_(False)
    norms = [(path, m) for path, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and not inside(path)]
    if norms:
        from torchvision.ops import FrozenBatchNorm2d

        for path, norm in norms:
            frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps)
            if norm.affine:
                frozen.weight.copy_(norm.weight.detach())
                frozen.bias.copy_(norm.bias.detach())
            if norm.track_running_stats:
                frozen.running_mean.copy_(norm.running_mean)
                frozen.running_var.copy_(norm.running_var)
            _set_module(model, path, frozen)
    return model


def _torchvision_model(name: str, n_classes: int, weights, options: dict) -> tuple[nn.Module, str]:
    """A torchvision architecture (never downloaded) with a new ``n_classes`` head; ``(model, head path)``."""
    from torchvision import models as tv_models

    arch = name.removeprefix("torchvision/")
    if arch not in torchvision_architectures():
        raise ValueError(f"unknown model {name!r}: not one of {sorted(MODELS)}, not a torchvision architecture "
                         "(torchvision.models.list_models()) and not a 'package.module:function' entry point")
    reserved = sorted({"weights", "num_classes", "progress"} & set(options))
    if reserved:
        raise ValueError(f"torchvision model {arch!r}: option {reserved[0]!r} is set by build_model "
                         "(weights are a local file, the head fits the classes)")
    try:
        model = tv_models.get_model(arch, weights=None, **options)  # weights=None: nothing is downloaded
    except (TypeError, ValueError) as err:
        raise ValueError(f"torchvision model {arch!r} rejected the options {options}: {err}") from err
    head_path, head = find_head(model)
    if weights is not None:
        load_weights(model, weights, skip_prefix=head_path)
    _set_module(model, head_path, nn.Linear(head.in_features, n_classes, bias=head.bias is not None))
    return model, head_path


def _check_output(model: nn.Module, name: str, input_shape: tuple[int, ...], n_classes: int) -> None:
    """One eval-mode pass on zeros ``[2, *input_shape]``: the logits must be ``[2, n_classes]``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *input_shape))
    except Exception as err:  # an architecture may reject the input size with any error type
        raise ValueError(f"model {name!r} fails on inputs [B, {', '.join(map(str, input_shape))}]: "
                         f"{type(err).__name__}: {err}") from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {name!r} maps inputs [2, {', '.join(map(str, input_shape))}] to {got}, "
                         f"expected logits (2, {n_classes})")


def network_input_shape(name: str, input_shape: Sequence[int]) -> tuple[int, int, int]:
    """The network's input ``(C, H, W)`` for images of ``input_shape``: torchvision models take RGB
    (greyscale images are replicated to 3 channels), other models the images' channels."""
    channels, height, width = _check_input_shape(input_shape)
    return (3 if model_kind(name) == "torchvision" else channels, height, width)


def build_model(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    *,
    weights: str | os.PathLike | None = None,
    seed: int | None = None,
    head_dropout: float = 0.0,
    dropconnect: float | None = None,
    frozen_backbone: bool = False,
    search_path: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """Build a model by name: a built-in, a torchvision architecture or the user's own function.

    Parameters
    ----------
    name : str
        - ``"gal_cnn"``, ``"vgg"``, ``"vgg16_bn"`` (:data:`MODELS`);
        - a torchvision classification architecture (``"resnet18"``, ``"efficientnet_b0"``,
          ``"vit_b_16"``, ... or ``"torchvision/vgg16_bn"``), built with ``weights=None``
          (random init: nothing is ever downloaded) and its last ``nn.Linear`` replaced by a new
          head ``Linear(in_features, n_classes)``;
        - an entry point ``"package.module:function"``, called as ``function(n_classes,
          input_shape) -> nn.Module`` (imported with ``search_path`` first on ``sys.path``).
    input_shape : (channels, height, width) of the images, a list is accepted (YAML configs).
        torchvision models take ``(3, height, width)`` (:func:`network_input_shape`).
    n_classes : int
    weights : path, optional
        Local state-dict file (``weights_only=True``). Built-ins and entry points load it strictly;
        a torchvision model loads every key but its head's (the file may hold a head for other
        classes, e.g. ImageNet's 1000) before the head is replaced.
    seed : int, optional
        When given, initialisation is deterministic: the model is constructed under torch's
        CPU RNG seeded with ``seed`` inside a fork, so the caller's global RNG is left untouched.
    head_dropout : float
        When > 0 and the model has no dropout layer of rate > 0, a ``nn.Dropout(head_dropout)``
        goes before the head: the head becomes ``Sequential(Dropout, Linear)``, so the model still
        ends in an ``nn.Linear`` (whose input is the dropped-out penultimate features).
    dropconnect : float, optional
        Wrap the head's Linear in :class:`al_lib.bayesian.MCDropConnect` with this weight-drop rate
        (stochastic in training and in MC passes); no dropout is added then.
    frozen_backbone : bool
        Train the head only (:func:`freeze_backbone`); use with pretrained ``weights``.
    search_path : path, optional, where entry points are imported from first.
    **kwargs
        Passed to the model class or torchvision builder (e.g. ``dropout``, ``hidden`` for the
        built-ins; ``image_size`` for ``vit_b_16``). Not allowed for entry points.

    Returns
    -------
    model : nn.Module on the CPU, in training mode, returning logits ``[B, n_classes]`` for
        inputs ``[B, *network_input_shape(name, input_shape)]``. Dropout layers are plain
        ``nn.Dropout`` (make them MC with :func:`al_lib.bayesian.patch_module`).

    Raises
    ------
    FileNotFoundError
        The weights file does not exist (named in the message).
    ValueError
        An unknown name, an entry point that cannot be imported or returns no module, options the
        architecture rejects, a weights file that does not fit, or logits of the wrong shape.
    """
    kind = model_kind(name)
    shape = network_input_shape(name, input_shape)
    if not 0 <= head_dropout < 1:
        raise ValueError(f"head_dropout must be in [0, 1), got {head_dropout!r}")
    if kind == "builtin":
        factory = MODELS[name]
    elif kind == "entry_point":
        if kwargs:
            raise ValueError(f"entry point {name!r} is called as function(n_classes, input_shape): "
                             f"options {sorted(kwargs)} cannot be passed")
        factory = resolve_entry_point(name, search_path)
    with contextlib.ExitStack() as stack:
        if seed is not None:
            stack.enter_context(isolated_torch_rng(seed))
        if kind == "torchvision":
            model, head_path = _torchvision_model(name, n_classes, weights, kwargs)
        else:
            model = factory(shape, n_classes, **kwargs) if kind == "builtin" else factory(n_classes, shape)
            if not isinstance(model, nn.Module):
                raise ValueError(f"entry point {name!r} returned a {type(model).__name__}, not an nn.Module")
            if weights is not None:
                load_weights(model, weights)
            head_path = None
        if kind != "builtin":
            _check_output(model, name, shape, n_classes)
        if dropconnect is not None or head_dropout > 0 or frozen_backbone:
            head_path = head_path or find_head(model)[0]
            head = model.get_submodule(head_path)
            if dropconnect is not None:
                from al_lib.bayesian import MCDropConnect

                _set_module(model, head_path, MCDropConnect(head, dropconnect))
            elif head_dropout > 0 and not has_dropout(model):
                _set_module(model, head_path, nn.Sequential(nn.Dropout(head_dropout), head))
            if frozen_backbone:
                freeze_backbone(model, head_path)
    return model.train()


#: ``model.mc`` values: what makes a model's MC samples differ.
MC_METHODS = ("dropout", "dropconnect", "ensemble")
#: Keys of a model config besides the constructor options (see :class:`ModelSpec`).
SPEC_KEYS = ("name", "input_shape", "weights", "mc", "head_dropout", "dropconnect", "ensemble_size",
             "freeze_backbone", "transforms")


@dataclass(frozen=True)
class ModelSpec:
    """A model config (the ``model:`` section of a workspace's params.yaml), validated.

    Attributes
    ----------
    name : str, see :func:`build_model`.
    input_shape : (channels, height, width) of the decoded images (channels 1 or 3).
    weights : str or None, local state-dict file, relative to ``root`` unless absolute.
    mc : {"dropout", "dropconnect", "ensemble"}
        ``dropout``: the model's dropout layers (plus ``head_dropout`` before the head where it
        has none) become consistent MC dropout. ``dropconnect``: MC DropConnect of rate
        ``dropconnect`` on the head's weights instead. ``ensemble``: a deep ensemble
        (:class:`al_lib.bayesian.Ensemble`) of ``ensemble_size`` members, each initialised from
        its own seed and trained on its own (dropout stays plain: off at prediction); member t is
        MC sample t, so an MC pass takes exactly ``ensemble_size`` iterations.
    head_dropout : float, rate of the dropout added before the head where the model has none.
    dropconnect : float, weight-drop rate with ``mc: dropconnect``.
    ensemble_size : int >= 2, members with ``mc: ensemble``.
    freeze_backbone : bool, train the head only.
    options : dict, the remaining keys: constructor options of a built-in or torchvision model.
    transforms : :class:`al_lib.transforms.TransformPolicy` (normalisation defaults: ImageNet
        statistics for torchvision models, none otherwise).
    root : Path or None, base of a relative ``weights`` path and where entry points are imported
        from first.
    """

    name: str
    input_shape: tuple[int, int, int]
    weights: str | None = None
    mc: str = "dropout"
    head_dropout: float = 0.5
    dropconnect: float = 0.2
    ensemble_size: int = 5
    freeze_backbone: bool = False
    options: dict = field(default_factory=dict)
    transforms: TransformPolicy | None = None
    root: Path | None = None

    @classmethod
    def from_config(cls, config: Mapping, *, root: str | os.PathLike | None = None,
                    check_files: bool = True) -> ModelSpec:
        """Validate ``config`` (see the attributes) and build the spec.

        Torchvision names are checked against ``torchvision.models.list_models()`` and entry points
        imported (from ``root`` first), so a bad name fails here, before anything trains. With
        ``check_files``, a ``weights`` file that does not exist fails too.

        Raises
        ------
        al_lib.transforms.ConfigError
            Naming the key (``name``, ``weights``, ``transforms.normalize``, an option, ...) and
            the bad value.
        """
        if not isinstance(config, Mapping):
            raise ConfigError("model", f"must be a mapping, got {config!r}")
        name = config.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError("name", f"must name a model, got {name!r}")
        shape = config.get("input_shape")
        if (not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[0] not in (1, 3)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
            raise ConfigError("input_shape", f"must be [channels (1 or 3), height, width], got {shape!r}")
        kind = model_kind(name)
        options = {k: v for k, v in config.items() if k not in SPEC_KEYS}
        root = None if root is None else Path(root)
        if kind == "builtin":
            _check_options(name, MODELS[name], options)
        elif kind == "entry_point":
            if options:
                raise ConfigError(sorted(options)[0], f"is not a key of a model given by an entry point ({name!r})")
            try:
                resolve_entry_point(name, root)
            except ValueError as err:
                raise ConfigError("name", str(err)) from None
        elif name.removeprefix("torchvision/") not in torchvision_architectures():
            raise ConfigError("name", f"must be one of {sorted(MODELS)}, a torchvision architecture "
                              f"(torchvision.models.list_models()) or 'package.module:function', got {name!r}")
        weights = config.get("weights")
        if weights is not None:
            if not isinstance(weights, str) or not weights:
                raise ConfigError("weights", f"must be a path to a local state-dict file, got {weights!r}")
            full = Path(weights) if root is None else root / weights
            if check_files and not full.is_file():
                raise ConfigError("weights", f"file {str(full)!r} does not exist (weights are never downloaded)")
        mc = config.get("mc", "dropout")
        if mc not in MC_METHODS:
            raise ConfigError("mc", f"must be one of {list(MC_METHODS)}, got {mc!r}")
        rates = {}
        for key, default in (("head_dropout", 0.5), ("dropconnect", 0.2)):
            value = config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(key, f"must be a rate in [0, 1), got {value!r}")
            rates[key] = float(value)
        size = config.get("ensemble_size", 5)
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise ConfigError("ensemble_size", f"must be an integer >= 2, got {size!r}")
        frozen = config.get("freeze_backbone", False)
        if not isinstance(frozen, bool):
            raise ConfigError("freeze_backbone", f"must be true or false, got {frozen!r}")
        net_channels = network_input_shape(name, shape)[0]
        policy = TransformPolicy.from_config(config.get("transforms"), input_shape=shape,
                                             network_channels=net_channels,
                                             default_normalize="imagenet" if kind == "torchvision" else "none")
        return cls(name, tuple(shape), weights, mc, rates["head_dropout"], rates["dropconnect"], size, frozen,
                   options, policy, root)

    @property
    def kind(self) -> str:
        return model_kind(self.name)

    @property
    def network_input_shape(self) -> tuple[int, int, int]:
        return network_input_shape(self.name, self.input_shape)

    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        return Path(self.weights) if self.root is None else self.root / self.weights

    def build(self, n_classes: int, *, seed: int | None = None, load_weights: bool = True) -> nn.Module:
        """The MC-ready model: :func:`build_model`, then (``mc: dropout``) every dropout layer made
        consistent MC dropout (:func:`al_lib.bayesian.patch_module`), so a sample's MC scores do not
        depend on its batch or shard; with ``mc: ensemble``, an :class:`al_lib.bayesian.Ensemble` of
        ``ensemble_size`` members built from seeds drawn from ``seed``. ``load_weights=False`` skips
        the weights file (when a checkpoint of this spec is loaded next)."""
        from al_lib.bayesian import Ensemble, patch_module

        if self.mc == "ensemble":
            seeds = [None] * self.ensemble_size if seed is None else \
                [draw_seed(g) for g in [check_random_state(seed)] for _ in range(self.ensemble_size)]
            return Ensemble([self._build_one(n_classes, s, load_weights) for s in seeds])
        model = self._build_one(n_classes, seed, load_weights)
        return patch_module(model, consistent=True) if self.mc == "dropout" else model

    def _build_one(self, n_classes: int, seed: int | None, load_weights: bool) -> nn.Module:
        return build_model(self.name, self.input_shape, n_classes,
                           weights=self.weights_path() if load_weights else None, seed=seed,
                           head_dropout=self.head_dropout if self.mc == "dropout" else 0.0,
                           dropconnect=self.dropconnect if self.mc == "dropconnect" else None,
                           frozen_backbone=self.freeze_backbone, search_path=self.root, **self.options)


def _check_options(name: str, factory, options: dict) -> None:
    """Options of a built-in model must be keyword parameters of its constructor."""
    parameters = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        parameters = {**parameters, **inspect.signature(VGGNet).parameters}
    allowed = sorted(k for k, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    for key in sorted(options):
        if key not in allowed:
            raise ConfigError(key, f"is not an option of model {name!r} (options: {', '.join(allowed)})")
