"""Make any torch model MC-stochastic in one call, and undo it."""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator

from torch import nn

from al_lib.bayesian.dropconnect import DROPCONNECT_CLASSES, MCDropConnect
from al_lib.bayesian.dropout import DROPOUT_CLASSES, ConsistentMCDropout, MCDropout

logger = logging.getLogger(__name__)


def patch_module(
    model: nn.Module,
    *,
    dropout: bool = True,
    dropconnect: float | None = None,
    dropconnect_layers: tuple[type[nn.Module], ...] = DROPCONNECT_CLASSES,
    consistent: bool = False,
    inplace: bool = True,
) -> nn.Module:
    """Replace a model's layers with MC layers that stay stochastic in ``eval()`` mode.

    Parameters
    ----------
    model : nn.Module
    dropout : bool
        Replace every Dropout, Dropout1d/2d/3d, AlphaDropout and FeatureAlphaDropout layer.
    dropconnect : float or None
        When given, wrap every layer of ``dropconnect_layers`` in MC DropConnect with this
        weight-drop probability.
    consistent : bool
        Use :class:`ConsistentMCDropout` (T masks fixed for an MC pass, as BatchBALD needs). The
        masks come from the ``seed`` of each MC call (``predict_mc(..., seed=...)``): every layer
        draws its own, and another seed (e.g. the next round's) draws new ones.
    inplace : bool
        Modify ``model`` itself (default) or a deep copy.

    Returns
    -------
    nn.Module
        The patched model. Warns when nothing was patched: such a model's MC samples are all
        identical and every epistemic heuristic (BALD, ...) would score zero.
    """
    if dropconnect is not None and not 0.0 <= dropconnect < 1.0:
        raise ValueError(f"dropconnect must be a probability in [0, 1), got {dropconnect}")
    if not inplace:
        model = copy.deepcopy(model)

    def replace(module: nn.Module) -> nn.Module | None:
        if dropout and type(module) in DROPOUT_CLASSES:
            return ConsistentMCDropout(module) if consistent else MCDropout(module)
        if dropconnect is not None and isinstance(module, dropconnect_layers):
            return MCDropConnect(module, dropconnect)
        return None

    n_patched = _replace_modules(model, replace)
    if n_patched == 0:
        warnings.warn(
            f"patch_module found no layer to make stochastic in {type(model).__name__} "
            "(no dropout layer and dropconnect not set): its MC samples will all be identical",
            UserWarning,
            stacklevel=2,
        )
    else:
        logger.info("patched %d layers of %s for MC sampling", n_patched, type(model).__name__)
    return model


def unpatch_module(model: nn.Module, *, inplace: bool = True) -> nn.Module:
    """Undo :func:`patch_module`: restore the original dropout layers and unwrap DropConnect."""
    if not inplace:
        model = copy.deepcopy(model)

    def restore(module: nn.Module) -> nn.Module | None:
        return module.restore() if isinstance(module, (MCDropout, MCDropConnect)) else None

    _replace_modules(model, restore)
    return model


@contextlib.contextmanager
def mc_dropout(model: nn.Module, **patch_kwargs) -> Iterator[nn.Module]:
    """Context-manager form: ``with mc_dropout(model): ...`` patches in place, unpatches on exit."""
    patch_kwargs.setdefault("inplace", True)
    if not patch_kwargs["inplace"]:
        raise ValueError("mc_dropout patches in place; use patch_module(inplace=False) for a copy")
    patched = patch_module(model, **patch_kwargs)
    try:
        yield patched
    finally:
        unpatch_module(patched)


def _replace_modules(module: nn.Module, replace) -> int:
    """Depth-first, replace children for which ``replace`` returns a module; return the count."""
    count = 0
    for name, child in list(module.named_children()):
        new = replace(child)
        if new is not None:
            setattr(module, name, new)
            count += 1
        else:
            count += _replace_modules(child, replace)
    return count
