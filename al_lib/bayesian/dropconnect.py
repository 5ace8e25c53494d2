"""MC DropConnect: drop individual weights of Linear / Conv layers at prediction time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from al_lib.bayesian.dropout import dropout_from
from al_lib.bayesian.mc_aware import MCAwareModule, MCStochasticModule

DROPCONNECT_CLASSES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MCDropConnect(MCAwareModule, MCStochasticModule):
    """Wraps a Linear/Conv layer; each forward pass drops each weight with probability ``p``.

    The weight mask is shared by all rows of one pass, so in a tiled MC pass each of the T
    chunks gets its own mask (otherwise the T "samples" would be one sample repeated). Inside an
    MC pass the masks come from the pass's generator (see
    :func:`~al_lib.bayesian.mc_aware.mc_generator`), drawn on the weight's device; otherwise from
    torch's global RNG.

    Parameters
    ----------
    layer : nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
        The wrapped layer (kept as ``self.layer`` and returned by :meth:`restore`).
    p : float
        Probability of dropping a weight, in [0, 1).
    """

    def __init__(self, layer: nn.Module, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropConnect probability must be in [0, 1), got {p}")
        self.layer = layer
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mc_iterations is None:
            return self._forward_once(x)
        chunks = self.split_iterations(x)
        out = torch.stack([self._forward_once(chunk) for chunk in chunks])
        return out.reshape(x.shape[0], *out.shape[2:])

    def _forward_once(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight
        generator = self.generator_on(weight.device)
        if generator is None:
            weight = F.dropout(weight, self.p, training=True)
        else:
            weight = dropout_from(generator, weight, self.p)
        return functional_call(self.layer, {"weight": weight}, (x,))

    def restore(self) -> nn.Module:
        return self.layer

    def extra_repr(self) -> str:
        return f"p={self.p}"
