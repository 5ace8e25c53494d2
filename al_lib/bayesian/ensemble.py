"""Deep ensembles: M independently trained members act as the M Monte-Carlo samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from al_lib.bayesian.mc_aware import MCAwareModule


class Ensemble(MCAwareModule):
    """An ensemble of models with the same output shape.

    In a tiled MC pass of T = ``len(ensemble)`` samples, chunk t goes through member t, so
    ``predict_mc(ensemble, data, iterations=len(ensemble))`` gives one MC sample per member. A
    plain call returns the log of the members' mean softmax (usable as logits).

    Parameters
    ----------
    members : sequence of nn.Module
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("an Ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    def set_mc_iterations(self, iterations: int | None) -> None:
        if iterations is not None and iterations != len(self):
            raise ValueError(
                f"an ensemble of {len(self)} members gives exactly {len(self)} MC samples, "
                f"not {iterations}: pass iterations={len(self)}"
            )
        super().set_mc_iterations(iterations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mc_iterations is None:
            logp = torch.stack([torch.log_softmax(m(x), dim=1) for m in self.members])
            return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(self))))
        chunks = self.split_iterations(x)
        out = torch.stack([m(chunk) for m, chunk in zip(self.members, chunks)])
        return out.reshape(x.shape[0], *out.shape[2:])

    @classmethod
    def from_checkpoints(
        cls, factory: Callable[[], nn.Module], paths: Sequence[str | Path]
    ) -> Ensemble:
        """Build ``len(paths)`` members with ``factory()`` and load each state dict (weights only).

        Raises ``FileNotFoundError`` / ``ValueError`` naming the checkpoint that is missing or does
        not fit the architecture.
        """
        members = []
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"ensemble checkpoint not found: {path}")
            member = factory()
            state = torch.load(path, map_location="cpu", weights_only=True)
            try:
                member.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"checkpoint {path} does not fit the model built by factory: {err}") from err
            members.append(member)
        return cls(members)
