"""Where computation runs: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device`` as a :class:`torch.device`; ``None`` or ``"auto"`` picks CUDA when available.

    Raises ``ValueError`` when CUDA is requested but not available, rather than failing later
    inside a forward pass.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but CUDA is not available on this machine")
    return device
