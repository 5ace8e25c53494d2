"""MC dropout layers: dropout that stays on at prediction time, optionally with consistent masks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from al_lib.bayesian.mc_aware import MCAwareModule

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


class MCDropout(nn.Module):
    """A dropout layer that samples a fresh mask on every forward pass, in train and eval mode alike.

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
        if self.original_class is nn.Dropout and _use_fast_path(x, self.p):
            return fast_dropout(x, self.p)
        return _FUNCTIONAL[self.original_class](x, self.p, training=True, inplace=False)

    def restore(self) -> nn.Module:
        """A fresh instance of the layer this one replaced."""
        return self.original_class(p=self.p, inplace=self.inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}, kind={self.original_class.__name__}"


class ConsistentMCDropout(MCDropout, MCAwareModule):
    """MC dropout whose T masks are fixed: MC sample t sees the same mask in every minibatch.

    BatchBALD's joint entropy compares the t-th MC sample across different inputs, which is only
    meaningful when sample t is one fixed function (Kirsch et al. 2019, "consistent MC dropout").
    During a tiled MC pass (see :mod:`al_lib.bayesian.mc_aware`) mask t comes from a generator
    seeded with ``seed``; outside one (training, plain calls) it behaves like :class:`MCDropout`.
    Call :meth:`reset_masks` to draw new masks (e.g. once per acquisition round).
    """

    def __init__(self, original: nn.Module, seed: int = 0) -> None:
        MCDropout.__init__(self, original)
        self.mc_iterations = None
        self.seed = int(seed)
        self._masks: dict[tuple, torch.Tensor] = {}

    def reset_masks(self, seed: int | None = None) -> None:
        """Forget the cached masks; the next tiled pass draws new ones (from ``seed`` if given)."""
        if seed is not None:
            self.seed = int(seed)
        self._masks.clear()

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
            # Drawn on the CPU so the masks are the same whatever the device.
            gen = torch.Generator().manual_seed(self.seed)
            keep = torch.rand((self.mc_iterations, *mask_shape), generator=gen) >= self.p
            self._masks[key] = keep.to(device)
        return self._masks[key]


# Fast element-wise dropout masks.
#
# torch's dropout draws one float per element from the generator; on the CPU that RNG is most of the
# cost of an MC dropout pass over a conv feature map. Instead we draw uniformly random 64-bit words
# (``random_(-2**63, None)`` covers the full 64-bit range, so every bit is a fair coin) from the same
# global generator -- ``torch.manual_seed`` / ``predict_mc(seed=...)`` still make the masks
# reproducible -- and cut each word into 8 independent uniform 8-bit lanes or 4 uniform 16-bit
# lanes. An element is kept when its lane is >= ``k``, with ``k = p * 2**bits``; so each element is
# kept independently with probability exactly ``1 - k / 2**bits``. 8-bit lanes are used when
# ``p * 256`` is an integer (p = 0.5, 0.25, 0.125, ...: exact), else 16-bit lanes with p quantised
# to the nearest multiple of 1/65536 (an error of at most 7.7e-6 in the drop rate). Kept elements are
# scaled by ``1 / (1 - p_quantised)``, so the expectation is preserved exactly. The masks differ from
# the ones ``F.dropout`` would draw for the same seed (the RNG stream is consumed differently).

#: Below this many elements the fast path gains nothing over ``F.dropout`` (fixed overheads dominate).
FAST_DROPOUT_MIN_NUMEL = 4096


def _use_fast_path(x: torch.Tensor, p: float) -> bool:
    return (
        x.device.type == "cpu"
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


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Element-wise inverted dropout with masks cut from random 64-bit words (see above).

    ``0 < p < 1`` and ``_lane_threshold(p)`` must not be None. Differentiable in ``x``.
    """
    bits, k = _lane_threshold(p)
    n = x.numel()
    lanes_per_word = 64 // bits
    words = torch.empty(-(-n // lanes_per_word), dtype=torch.int64, device=x.device)
    words.random_(-(2**63), None)  # uniform over all 2**64 words
    # Signed lanes s are uniform on [-2**(bits-1), 2**(bits-1)); unsigned u = s + 2**(bits-1), so
    # u >= k  <=>  s >= k - 2**(bits-1).
    lanes = words.view(torch.int8 if bits == 8 else torch.int16)[:n].view(x.shape)
    scale = 1.0 / (1.0 - k / 2**bits)
    mask = (lanes >= k - 2 ** (bits - 1)).to(x.dtype).mul_(scale)
    if x.requires_grad and torch.is_grad_enabled():
        return x * mask
    return mask.mul_(x)


def _apply_mask(x: torch.Tensor, keep: torch.Tensor, p: float, alpha: bool) -> torch.Tensor:
    """Apply a keep-mask with the scaling of standard (inverted) or alpha dropout."""
    if p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x) if not alpha else torch.full_like(x, _alpha_affine(p)[1])
    if not alpha:
        return x * keep / (1.0 - p)
    a, b = _alpha_affine(p)
    return a * (x * keep + _ALPHA_PRIME * (1.0 - keep)) + b


def _alpha_affine(p: float) -> tuple[float, float]:
    """Affine correction that keeps SELU activations at zero mean, unit variance under dropout."""
    if p >= 1.0:
        return 0.0, 0.0
    a = 1.0 / math.sqrt((1.0 - p) * (1.0 + p * _ALPHA_PRIME**2))
    return a, -a * _ALPHA_PRIME * p
