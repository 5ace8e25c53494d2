"""MC dropout layers: dropout that stays on at prediction time, optionally with consistent masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from al_lib.bayesian.mc_aware import MCAwareModule, MCStochasticModule
from al_lib.seeding import draw_seed

# Dropout classes we patch, and whether their mask covers whole channels (dim 1) or single elements.
DROPOUT_CLASSES: dict[type[nn.Module], bool] = {
    nn.Dropout: False,
    nn.AlphaDropout: False,
    nn.Dropout1d: True,
    nn.Dropout2d: True,
    nn.Dropout3d: True,
    nn.FeatureAlphaDropout: True,
}
_ALPHA_CLASSES = (nn.AlphaDropout, nn.FeatureAlphaDropout)
# SELU's saturation value: alpha dropout sets dropped units to it (Klambauer et al. 2017).
_ALPHA_PRIME = -1.7580993408473766

_FUNCTIONAL = {
    nn.Dropout: F.dropout,
    nn.AlphaDropout: F.alpha_dropout,
    nn.Dropout1d: F.dropout1d,
    nn.Dropout2d: F.dropout2d,
    nn.Dropout3d: F.dropout3d,
    nn.FeatureAlphaDropout: F.feature_alpha_dropout,
}


class MCDropout(MCStochasticModule):
    """A dropout layer that samples a fresh mask on every forward pass, in train and eval mode alike.

    Inside an MC pass (see :func:`~al_lib.bayesian.mc_aware.mc_generator`) masks come from the
    pass's generator (:func:`dropout_from`); otherwise from torch's global RNG, exactly as the
    layer it replaced would draw them in training mode.

    Parameters
    ----------
    original : nn.Module
        The dropout layer replaced (one of ``DROPOUT_CLASSES``); its class, ``p`` and ``inplace`` are
        kept so :func:`~al_lib.bayesian.unpatch_module` can restore it.
    """

    def __init__(self, original: nn.Module) -> None:
        super().__init__()
        self.original_class = type(original)
        self.p = float(original.p)
        self.inplace = bool(getattr(original, "inplace", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        generator = self.generator_on(x.device)
        if generator is not None:
            return dropout_from(generator, x, self.p, self.original_class)
        if self.original_class is nn.Dropout and _use_fast_path(x, self.p):
            return fast_dropout(x, self.p)
        return _FUNCTIONAL[self.original_class](x, self.p, training=True, inplace=False)

    def restore(self) -> nn.Module:
        """A fresh instance of the layer this one replaced."""
        return self.original_class(p=self.p, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, kind={self.original_class.__name__}"


class ConsistentMCDropout(MCDropout, MCAwareModule):
    """MC dropout whose T masks are fixed for an MC pass: sample t sees the same mask in every batch.

    BatchBALD's joint entropy compares the t-th MC sample across different inputs, which is only
    meaningful when sample t is one fixed function (Kirsch et al. 2019, "consistent MC dropout").
    During a tiled MC pass (see :mod:`al_lib.bayesian.mc_aware`) the T masks ``[T, *mask_shape]``
    are drawn once, on the CPU (so they are the same on every device), from a seed this layer takes
    from the pass's generator when it is handed one: the same pass seed gives the same masks
    whatever the batch size, a sample's position in its batch, or which call or shard it is scored
    in; another seed gives other masks. A tiled pass without a generator draws its masks from
    torch's global RNG. Outside a tiled pass (training, plain calls) it behaves like
    :class:`MCDropout`.
    """

    def __init__(self, original: nn.Module) -> None:
        MCDropout.__init__(self, original)
        self.mc_iterations = None
        self._mask_seed: int | None = None
        self._masks: dict[tuple, torch.Tensor] = {}

    def set_generator(self, generator: torch.Generator | None) -> None:
        super().set_generator(generator)
        # Taken before any other draw, so the masks depend on the pass's seed alone.
        self._mask_seed = None if generator is None else draw_seed(generator)
        self._masks.clear()

    def set_mc_iterations(self, iterations: int | None) -> None:
        super().set_mc_iterations(iterations)
        self._masks.clear()  # masks live for one pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mc_iterations is None:
            return MCDropout.forward(self, x)
        xt = self.split_iterations(x)
        keep = self._masks_for(xt.shape[2:], x.device)
        out = _apply_mask(xt, keep.unsqueeze(1).to(x.dtype), self.p, self.original_class in _ALPHA_CLASSES)
        return out.reshape(x.shape)

    def _masks_for(self, sample_shape: torch.Size, device: torch.device) -> torch.Tensor:
        """Boolean keep-masks [T, *mask_shape] for inputs whose per-sample shape is ``sample_shape``."""
        channelwise = DROPOUT_CLASSES[self.original_class]
        mask_shape = (sample_shape[0],) + (1,) * (len(sample_shape) - 1) if channelwise else tuple(sample_shape)
        key = (mask_shape, self.mc_iterations, str(device))
        if key not in self._masks:
            # A fresh CPU generator per key: the masks do not depend on the device or on other shapes.
            gen = None if self._mask_seed is None else torch.Generator().manual_seed(self._mask_seed)
            keep = torch.rand((self.mc_iterations, *mask_shape), generator=gen) >= self.p
            self._masks[key] = keep.to(device)
        return self._masks[key]


def dropout_from(generator: torch.Generator, x: torch.Tensor, p: float,
                 kind: type[nn.Module] = nn.Dropout) -> torch.Tensor:
    """Training-mode dropout of kind ``kind`` on ``x``, its mask drawn from ``generator``.

    Parameters
    ----------
    generator : torch.Generator on ``x.device``
    x : tensor ``[N, C, ...]`` (channel-wise kinds drop whole ``x[n, c]`` slices; an unbatched
        ``[C, ...]`` input of Dropout1d/Dropout3d drops whole ``x[c]``, as torch does)
    p : float in [0, 1], the drop probability
    kind : one of ``DROPOUT_CLASSES``

    Returns
    -------
    tensor shaped like ``x``: the same distribution as ``kind``'s own training-mode forward
    (element-wise ``nn.Dropout`` of at least ``FAST_DROPOUT_MIN_NUMEL`` elements uses
    :func:`fast_dropout`, on any device), but never torch's global RNG.
    """
    if kind is nn.Dropout and _use_fast_path(x, p, any_device=True):
        return fast_dropout(x, p, generator=generator)
    alpha = kind in _ALPHA_CLASSES
    if p == 0.0 or p == 1.0:
        return _apply_mask(x, None, p, alpha)
    shape = _mask_shape(kind, x.shape)
    keep = torch.rand(shape, generator=generator, device=x.device) >= p
    return _apply_mask(x, keep.to(x.dtype), p, alpha)


def _mask_shape(kind: type[nn.Module], shape: torch.Size) -> tuple[int, ...]:
    """Shape of ``kind``'s mask for an input of ``shape`` (broadcast over the dims set to 1)."""
    if not DROPOUT_CLASSES[kind] or len(shape) < 2:
        return tuple(shape)
    unbatched = (kind is nn.Dropout1d and len(shape) == 2) or (kind is nn.Dropout3d and len(shape) == 4)
    channel_dims = 1 if unbatched else 2
    return tuple(shape[:channel_dims]) + (1,) * (len(shape) - channel_dims)


# Fast element-wise dropout masks.
#
# torch's dropout draws one float per element from the generator; on the CPU that RNG is most of the
# cost of an MC dropout pass over a conv feature map. Instead we draw uniformly random 64-bit words
# (``random_(-2**63, None)`` covers the full 64-bit range, so every bit is a fair coin) -- from the
# MC pass's generator when one is given, else from torch's global RNG, as ``F.dropout`` would -- and
# cut each word into 8 independent uniform 8-bit lanes or 4 uniform 16-bit lanes. An element is kept
# when its lane is >= ``k``, with ``k = p * 2**bits``; so each element is kept independently with
# probability exactly ``1 - k / 2**bits``. 8-bit lanes are used when ``p * 256`` is an integer
# (p = 0.5, 0.25, 0.125, ...: exact), else 16-bit lanes with p quantised to the nearest multiple of
# 1/65536 (an error of at most 7.7e-6 in the drop rate). Kept elements are scaled by
# ``1 / (1 - p_quantised)``, so the expectation is preserved exactly. The masks differ from the ones
# ``F.dropout`` would draw for the same seed (the RNG stream is consumed differently).
#
# Without a generator the fast path is taken on the CPU only (elsewhere ``F.dropout``'s own kernel
# is used). ``F.dropout`` cannot take a generator, so with one the fast path serves every device.

#: Below this many elements the fast path gains nothing over ``F.dropout`` (fixed overheads dominate).
FAST_DROPOUT_MIN_NUMEL = 4096


def _use_fast_path(x: torch.Tensor, p: float, *, any_device: bool = False) -> bool:
    """Whether :func:`fast_dropout` applies to ``x`` (on the CPU only unless ``any_device``)."""
    return (
        (any_device or x.device.type == "cpu")
        and x.is_floating_point()
        and x.numel() >= FAST_DROPOUT_MIN_NUMEL
        and 0.0 < p < 1.0
        and _lane_threshold(p) is not None
    )


def _lane_threshold(p: float) -> tuple[int, int] | None:
    """``(bits, k)``: drop an element when its ``bits``-bit lane is < k; None if p rounds to 0 or 1."""
    k8 = p * 256
    if k8 == round(k8):
        return 8, int(k8)
    k16 = round(p * 65536)
    if 0 < k16 < 65536:
        return 16, k16
    return None


def quantised_p(p: float) -> float:
    """The drop probability :func:`fast_dropout` actually applies for a nominal ``p``."""
    bits, k = _lane_threshold(p)
    return k / 2**bits


def fast_dropout(x: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Element-wise inverted dropout with masks cut from random 64-bit words (see above).

    ``0 < p < 1`` and ``_lane_threshold(p)`` must not be None. Differentiable in ``x``. The words
    come from ``generator`` (on ``x.device``), or from torch's global RNG when it is None.
    """
    bits, k = _lane_threshold(p)
    n = x.numel()
    lanes_per_word = 64 // bits
    words = torch.empty(-(-n // lanes_per_word), dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None, generator=generator)  # uniform over all 2**64 words
    # Signed lanes s are uniform on [-2**(bits-1), 2**(bits-1)); unsigned u = s + 2**(bits-1), so
    # u >= k  <=>  s >= k - 2**(bits-1).
    lanes = words.view(torch.int8 if bits == 8 else torch.int16)[:n].view(x.shape)
    scale = 1.0 / (1.0 - k / 2**bits)
    mask = (lanes >= k - 2 ** (bits - 1)).to(x.dtype).mul_(scale)
    if x.requires_grad and torch.is_grad_enabled():
        return x * mask
    return mask.mul_(x)


def _apply_mask(x: torch.Tensor, keep: torch.Tensor, p: float, alpha: bool) -> torch.Tensor:
    """Apply a keep-mask with the scaling of standard (inverted) or alpha dropout.

    ``keep`` (float, broadcastable to ``x``) is often much smaller than ``x`` (channel masks, one
    consistent mask per MC sample): the scaling is folded into it, so ``x`` is read once.
    """
    if p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x) if not alpha else torch.full_like(x, _alpha_affine(p)[1])
    if not alpha:
        return x * (keep / (1.0 - p))
    # a * (x * keep + alpha' * (1 - keep)) + b  ==  offset + x * scale
    a, b = _alpha_affine(p)
    return torch.addcmul((1.0 - keep) * (a * _ALPHA_PRIME) + b, x, keep * a)


def _alpha_affine(p: float) -> tuple[float, float]:
    """Affine correction that keeps SELU activations at zero mean, unit variance under dropout."""
    if p >= 1.0:
        return 0.0, 0.0
    a = 1.0 / math.sqrt((1.0 - p) * (1.0 + p * _ALPHA_PRIME**2))
    return a, -a * _ALPHA_PRIME * p
