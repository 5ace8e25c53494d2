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
