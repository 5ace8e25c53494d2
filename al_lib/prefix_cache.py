"""Prefix-cached MC inference: split a model at its first stochastic layer.

Everything before a model's first stochastic layer is deterministic, so an MC pass needs it only
once per batch: with ``model(x) == tail(prefix(x))``, :func:`al_lib.inference.iter_predict_mc`
runs ``prefix`` on the ``[B, ...]`` batch and only ``tail`` on the T-tiled rows (t-major, the
protocol of :mod:`al_lib.bayesian.mc_aware`, so consistent dropout, DropConnect and ensembles in
the tail behave exactly as in a full tiled pass).

The split is found, in this order:

1. from the user: ``split="features"`` (cut right after that submodule's output) or an explicit
   ``(prefix, tail)`` pair of modules;
2. for ``nn.Sequential`` models (nested Sequentials flattened), in module order, before the first
   layer that is not provably deterministic;
3. for any other model, by torch.fx symbolic tracing: the graph is cut at the latest point before
   its first stochastic node where exactly one value, not the input, crosses into the tail.

When none applies (the first layer is stochastic, an :class:`~al_lib.bayesian.Ensemble`, an
untraceable model, the input reused after the first stochastic layer...) the result has no prefix
and says why; inference then tiles the whole model. Analyses are cached per model and redone when
its modules, parameters or buffers are replaced. Traced graphs are specialised to ``eval()`` mode,
the only mode MC inference runs in.

"Stochastic" means: any :class:`~al_lib.bayesian.MCStochasticModule` (MC dropout, DropConnect) or
:class:`~al_lib.bayesian.MCAwareModule`, a module containing one, or a traced random op (torch.rand*,
bernoulli, functional dropout with ``training=True``, ...). A module we cannot analyse (a custom
module fx cannot trace) counts as stochastic: putting a deterministic layer in the tail only costs
speed, the reverse would cost correctness.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from al_lib.bayesian.mc_aware import MCAwareModule, MCStochasticModule

logger = logging.getLogger(__name__)

__all__ = ["MCSplit", "check_prefix_output", "contains_stochastic", "find_split", "forget_split", "plan_split"]

ENGINES = ("auto", "prefix", "full")

# Functions that always draw random numbers.
_RANDOM_FUNCTIONS = frozenset({
    torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
    torch.randperm, torch.bernoulli, torch.multinomial, torch.normal, torch.poisson, F.gumbel_softmax,
})
# Functions random only in training mode: (name of the flag, its position, its default).
_RANDOM_IF_TRAINING = {
    **{f: ("training", 2, True) for f in (F.dropout, F.alpha_dropout, F.feature_alpha_dropout,
                                          F.dropout1d, F.dropout2d, F.dropout3d)},
    **{f: ("train", 2, True) for f in (torch.dropout, torch.alpha_dropout, torch.feature_dropout,
                                       torch.feature_alpha_dropout)},
    F.rrelu: ("training", 3, False),
    torch.rrelu: ("training", 3, False),
}
_RANDOM_METHODS = frozenset({
    "bernoulli", "bernoulli_", "multinomial", "uniform_", "normal_", "random_", "exponential_",
    "cauchy_", "geometric_", "log_normal_",
})


@dataclass(frozen=True)
class MCSplit:
    """A model cut in two: ``model(x) == tail(prefix(x))`` with a deterministic ``prefix``.

    Attributes
    ----------
    prefix : nn.Module or None
        Maps the batch ``[B, ...]`` to one tensor ``[B, ...]``; None when there is no usable prefix
        (then ``tail`` is the whole model and inference tiles its input).
    tail : nn.Module
        Holds every stochastic layer; runs on the T-tiled prefix output.
    how : {"user", "sequential", "fx", "full"}
        Where the split came from.
    reason : str
        Human-readable: where the cut is, or why there is none.
    """

    prefix: nn.Module | None
    tail: nn.Module
    how: str
    reason: str


@dataclass(frozen=True)
class _Analysis:
    """A cached split. It never references the model itself: the cache holds models weakly."""

    prefix: nn.Module | None
    tail: nn.Module | None
    how: str
    reason: str

    def bind(self, model: nn.Module) -> MCSplit:
        if self.prefix is None:
            return MCSplit(None, model, "full", self.reason)
        return MCSplit(self.prefix, self.tail, self.how, self.reason)


def _no_prefix(reason: str) -> _Analysis:
    return _Analysis(None, None, "full", reason)


# model -> {split name or None: (signature, analysis)}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plan_split(model: nn.Module, *, engine: str = "auto", split=None) -> MCSplit:
    """The split :func:`~al_lib.inference.iter_predict_mc` uses for ``engine`` and ``split``.

    Parameters
    ----------
    model : nn.Module, already in ``eval()`` mode on its device.
    engine : {"auto", "prefix", "full"}
        "auto": prefix-cached when a split exists, else full tiling; "prefix": a split is required
        (ValueError naming why there is none); "full": tile the whole model.
    split : None, str or (nn.Module, nn.Module)
        See :func:`find_split`. Not allowed with ``engine="full"``.

    Returns
    -------
    MCSplit
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "full":
        if split is not None:
            raise ValueError("split was given but engine='full' never splits the model")
        return MCSplit(None, model, "full", "engine='full'")
    hooked = _hooked_container(model) if split is None else None
    if hooked is None:
        found = find_split(model, split)
    else:
        found = MCSplit(None, model, "full", f"forward hooks on {hooked or 'the model'} would not run in a split")
        logger.info("MC split of %s: %s", type(model).__name__, found.reason)
    if found.prefix is None and engine == "prefix":
        raise ValueError(
            f"engine='prefix' but {type(model).__name__} has no deterministic prefix: {found.reason}"
        )
    return found


def find_split(model: nn.Module, split=None) -> MCSplit:
    """Split ``model`` before its first stochastic layer (cached).

    Parameters
    ----------
    model : nn.Module
    split : None, str or (nn.Module, nn.Module)
        None: automatic (module order for ``nn.Sequential``, else torch.fx). A submodule name: the
        prefix ends with that submodule's output (e.g. ``"features"``); ValueError when that cut
        is not a single deterministic value. A ``(prefix, tail)`` pair: used as given, the caller
        guarantees ``tail(prefix(x)) == model(x)``; ValueError when ``prefix`` holds a stochastic
        layer.

    Returns
    -------
    MCSplit
        ``prefix=None`` (and ``tail=model``) when the model has no usable deterministic prefix;
        ``reason`` says why. Such an outcome is logged at INFO, once per analysis.
    """
    if isinstance(split, Sequence) and not isinstance(split, str):
        return _user_pair(split)
    if split is not None and not isinstance(split, str):
        raise TypeError(
            f"split must be None, a submodule name or a (prefix, tail) pair, got {type(split).__name__}"
        )
    signature = _signature(model)
    per_model = _CACHE.setdefault(model, {})
    cached = per_model.get(split)
    if cached is not None and cached[0] == signature:
        return cached[1].bind(model)
    analysis = _named_split(model, split) if split is not None else _auto_split(model)
    per_model[split] = (signature, analysis)
    log = logger.info if analysis.prefix is None else logger.debug
    log("MC split of %s: %s", type(model).__name__, analysis.reason)
    return analysis.bind(model)


def forget_split(model: nn.Module, split: str | None = None, *, reason: str | None = None) -> None:
    """Drop the cached analysis of ``model`` for ``split``; with ``reason``, remember "no prefix" instead.

    Inference calls this when a found prefix turns out unusable at run time (see
    :func:`check_prefix_output`), so later calls go straight to full tiling.
    """
    per_model = _CACHE.get(model, {})
    if reason is None:
        per_model.pop(split, None)
    elif split in per_model:
        per_model[split] = (per_model[split][0], _no_prefix(reason))


def check_prefix_output(split: MCSplit, x: torch.Tensor) -> str | None:
    """None when ``split.prefix`` keeps the samples along dim 0 of its output, else why not.

    Probes the prefix with the first one and two samples of ``x``: tiling the prefix output along
    dim 0 tiles the samples only when dim 0 is the batch, and a layout such as ``[S, B, E]`` whose
    dim 0 merely equals B fails the probe.
    """
    for rows in sorted({1, min(2, x.shape[0])}):
        h = split.prefix(x[:rows])
        if not isinstance(h, torch.Tensor):
            return f"the prefix returns a {type(h).__name__}, not a tensor"
        if h.ndim == 0 or h.shape[0] != rows:
            return f"the prefix output for {rows} sample(s) has shape {tuple(h.shape)}: the batch is not dim 0"
    return None


# ---------------------------------------------------------------------------- what is stochastic


def is_stochastic_module(module: nn.Module) -> bool:
    """Whether ``module`` itself samples in eval mode: an MC-stochastic or MC-aware module."""
    return isinstance(module, (MCStochasticModule, MCAwareModule))


def contains_stochastic(module: nn.Module) -> bool:
    """Whether ``module`` or any of its submodules is an MC layer."""
    return any(is_stochastic_module(m) for m in module.modules())


def _is_leaf(module: nn.Module) -> bool:
    """Layers a split calls as modules: torch.nn's own (Sequential aside) and MC layers.

    MC layers must stay whole: their forward reads run-time state such as T.
    """
    return is_stochastic_module(module) or (_is_builtin(module) and not isinstance(module, nn.Sequential))


def _hooked_container(model: nn.Module) -> str | None:
    """Name of a module with forward hooks that a split would not call as a module, if any.

    A split calls leaf layers as modules, so their hooks run; the model itself and the containers
    or custom modules traced through are replaced by their contents, so theirs would not.
    """
    for name, module in model.named_modules():
        if not _is_leaf(module) and (module._forward_hooks or module._forward_pre_hooks):
            return name
    return None


def _is_builtin(module: nn.Module) -> bool:
    return type(module).__module__.startswith(("torch.nn.", "torch.ao.nn."))


def _is_deterministic(module: nn.Module, *, untraceable: bool = False) -> bool:
    """Whether ``module`` in eval mode draws no random numbers; ``untraceable`` when we cannot tell.

    torch.nn's own layers are deterministic in eval mode; custom code is traced and inspected.
    """
    if contains_stochastic(module):
        return False
    if all(_is_builtin(m) for m in module.modules()):
        return True
    try:
        graph = _trace(module)
    except Exception:  # noqa: BLE001 - any tracing failure means "cannot tell"
        return untraceable
    modules = dict(module.named_modules())
    return not any(_is_random_node(node, modules) for node in graph.nodes)


def _is_random_node(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return not _is_deterministic(modules[node.target])
    if node.op == "call_method":
        return node.target in _RANDOM_METHODS
    if node.op != "call_function":
        return False
    if node.target in _RANDOM_FUNCTIONS:
        return True
    if node.target not in _RANDOM_IF_TRAINING:
        return False
    name, position, default = _RANDOM_IF_TRAINING[node.target]
    flag = node.kwargs.get(name, node.args[position] if len(node.args) > position else default)
    return flag is not False  # a traced flag (a Node) could be True: count it as random


class _Tracer(fx.Tracer):
    """Keeps leaf layers (see :func:`_is_leaf`) and the submodules named in ``leaves`` as single nodes."""

    def __init__(self, leaves: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or _is_leaf(m)


def _trace(module: nn.Module, leaves: frozenset[str] = frozenset()) -> fx.Graph:
    return _Tracer(leaves).trace(module)


# ---------------------------------------------------------------------------- finding the cut


def _signature(model: nn.Module) -> tuple:
    """Identity of every submodule, parameter and buffer: replacing any of them invalidates a split."""
    return (
        tuple((name, id(m)) for name, m in model.named_modules()),
        tuple(id(p) for p in model.parameters()),
        tuple(id(b) for b in model.buffers()),
    )


def _auto_split(model: nn.Module) -> _Analysis:
    if is_stochastic_module(model):
        return _no_prefix(f"the model itself is stochastic as a whole ({type(model).__name__})")
    if _is_plain_sequential(model):
        return _sequential_split(model)
    try:
        graph = _trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many types; all mean "cannot split"
        return _no_prefix(f"torch.fx cannot trace it ({type(err).__name__}: {err})")
    nodes = list(graph.nodes)
    modules = dict(model.named_modules())
    first = next(i for i, n in enumerate(nodes) if n.op == "output" or _is_random_node(n, modules))
    found = _latest_single_value_cut(nodes, first)
    if found is None:
        return _no_prefix(
            f"no cut before the first stochastic node ({nodes[first].name}) hands a single computed value "
            "to the rest: the stochastic layer comes first, or the input or several values are used after it"
        )
    cut, value = found
    prefix, tail = _split_graph(model, nodes, cut, value)
    return _Analysis(prefix, tail, "fx", f"traced; the tail starts after {value.name!r}")


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _flatten_sequential(seq: nn.Sequential) -> list[nn.Module]:
    units: list[nn.Module] = []
    for child in seq:
        units.extend(_flatten_sequential(child) if _is_plain_sequential(child) else [child])
    return units


def _sequential_split(model: nn.Sequential) -> _Analysis:
    units = _flatten_sequential(model)
    first = next((i for i, unit in enumerate(units) if not _is_deterministic(unit)), len(units))
    if first == 0:
        return _no_prefix(f"its first layer ({type(units[0]).__name__}) is stochastic")
    return _Analysis(nn.Sequential(*units[:first]), nn.Sequential(*units[first:]), "sequential",
                     f"module order; the tail starts at layer {first} of {len(units)}")


def _crossing(nodes: list[fx.Node], position: dict[fx.Node, int], cut: int) -> list[fx.Node]:
    """Values made before ``cut`` and used from ``cut`` on (parameters excluded: the tail reads them)."""
    return [n for n in nodes[:cut] if n.op != "get_attr" and any(position[u] >= cut for u in n.users)]


def _latest_single_value_cut(nodes: list[fx.Node], first: int) -> tuple[int, fx.Node] | None:
    """The largest ``cut <= first`` where one computed value carries everything into ``nodes[cut:]``.

    Moving the cut earlier than the first stochastic node can merge several crossing values into
    one (a residual branch that joins after the dropout). Once the input itself crosses, every
    earlier cut carries it too: stop.
    """
    position = {n: i for i, n in enumerate(nodes)}
    for cut in range(first, 0, -1):
        crossing = _crossing(nodes, position, cut)
        if any(n.op == "placeholder" for n in crossing):
            return None
        if len(crossing) == 1:
            return cut, crossing[0]
    return None


def _split_graph(
    model: nn.Module, nodes: list[fx.Node], cut: int, value: fx.Node
) -> tuple[fx.GraphModule, fx.GraphModule]:
    """GraphModules for ``nodes[:cut]`` (returning ``value``) and ``nodes[cut:]`` (taking it)."""
    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes[:cut]:
        env[node] = head.node_copy(node, env.__getitem__)
    head.output(env[value])

    body = fx.Graph()
    env = {value: body.placeholder(value.name)}

    def arg(node: fx.Node) -> fx.Node:
        if node not in env:  # a parameter read on both sides of the cut: the tail reads it again
            env[node] = body.node_copy(node)
        return env[node]

    for node in nodes[cut:]:
        env[node] = body.node_copy(node, arg)
    return _graph_module(model, head, "MCPrefix"), _graph_module(model, body, "MCTail")


def _graph_module(model: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    module = fx.GraphModule(model, graph, name)
    module.graph.eliminate_dead_code()  # the purity check needs the owning module
    module.recompile()
    return module


def _named_split(model: nn.Module, name: str) -> _Analysis:
    """Cut right after submodule ``name``; ValueError when that cut is not a valid split."""
    try:
        model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"split={name!r}: {type(model).__name__} has no such submodule") from err
    try:
        graph = _trace(model, frozenset({name}))
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"split={name!r} needs torch.fx, which cannot trace the model: {err}") from err
    nodes = list(graph.nodes)
    calls = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == name]
    if len(calls) != 1:
        raise ValueError(f"split={name!r}: the submodule is called {len(calls)} times in forward, not once")
    cut = calls[0] + 1
    modules = dict(model.named_modules())
    if any(_is_random_node(n, modules) for n in nodes[:cut]):  # the named submodule included
        raise ValueError(f"split={name!r}: the prefix up to that submodule is not deterministic")
    crossing = _crossing(nodes, {n: i for i, n in enumerate(nodes)}, cut)
    if crossing != [nodes[calls[0]]]:
        names = [n.name for n in crossing]
        raise ValueError(
            f"split={name!r}: the rest of the model needs {names}, not only that submodule's output"
        )
    prefix, tail = _split_graph(model, nodes, cut, nodes[calls[0]])
    return _Analysis(prefix, tail, "user", f"split after submodule {name!r}")


def _user_pair(split: Sequence) -> MCSplit:
    if len(split) != 2 or not all(isinstance(m, nn.Module) for m in split):
        raise TypeError("a split pair must be (prefix: nn.Module, tail: nn.Module)")
    prefix, tail = split
    # An untraceable prefix is taken on trust; one with a visible MC layer or random op is refused.
    if not _is_deterministic(prefix, untraceable=True):
        raise ValueError(f"the split prefix {type(prefix).__name__} holds a stochastic layer")
    return MCSplit(prefix, tail, "user", "user-given (prefix, tail) pair")
