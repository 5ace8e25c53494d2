"""The workspace's acquisition strategy: one al_lib strategy object, built from params.yaml.

``heuristic`` names a strategy of :func:`al_lib.strategies.available_strategies`; its mapping form
``heuristic: {name: probcover, delta: 0.5}`` gives it options (the fields of the strategy's class,
e.g. ``max_candidates``, ``n_neighbors``, ``temperature``) and the round's own settings of
:data:`ROUND_SETTINGS` (EPIG's target set). ``initial_strategy`` (simulation's round-0 labels) takes
the same forms.
"""

from __future__ import annotations

import dataclasses

from tasks.workspace import Params

#: BatchBALD's candidates in a workspace: the top 2048 by BALD whatever the query size, so a
#: changed ``query_size`` re-runs only the query step (see al_lib.strategies.BatchBALDStrategy).
BATCH_BALD_CANDIDATES = 2048

#: Options that the round reads itself (not the strategy's constructor), with their allowed values.
#: EPIG's ``target``: "pool" (default) = a seeded sample of ``target_size`` of the scored pool
#: candidates, the paper's choice when no target distribution is known (and what
#: :func:`al_lib.acquisition.acquire` does without ``target=``); "held_out" = the workspace's
#: held-out inputs (manifest split test/val), a sample of ``target_size`` of them when more.
ROUND_SETTINGS: dict[str, dict[str, tuple]] = {"epig": {"target": ("pool", "held_out")}}


def round_settings(name: str) -> dict[str, tuple]:
    """The round's own options of strategy ``name`` and their allowed values (see :data:`ROUND_SETTINGS`)."""
    return ROUND_SETTINGS.get(name, {})


def strategy_from(name: str, options: dict, n_classes: int):
    """The :class:`al_lib.strategies.Strategy` ``name`` with ``options`` (the round's settings
    left out) for a workspace of ``n_classes`` classes.

    Workspace defaults: BatchBALD keeps :data:`BATCH_BALD_CANDIDATES` candidates; ProbCover
    without ``delta`` chooses it automatically on ``n_classes`` k-means clusters (Yehuda et al.).

    Raises ValueError / TypeError for an option the strategy refuses.
    """
    from al_lib.strategies import get_strategy  # torch: only on use

    kwargs = {k: v for k, v in options.items() if k not in round_settings(name)}
    if name == "batch_bald":
        kwargs.setdefault("num_candidates", BATCH_BALD_CANDIDATES)
    if name == "probcover" and kwargs.get("delta") is None:
        kwargs.setdefault("n_clusters", n_classes)
    return get_strategy(name, **kwargs)


def strategy_options(name: str, n_classes: int) -> set[str]:
    """The constructor options params.yaml may give strategy ``name`` (its dataclass fields)."""
    strategy = strategy_from(name, {}, n_classes)
    if not dataclasses.is_dataclass(strategy):
        return set()
    identity = {"name", "target_probs", "sampler"} | ({"heuristic"} if name != "class_balanced" else set())
    return {f.name for f in dataclasses.fields(strategy) if f.init} - identity


def workspace_strategy(params: Params):
    """The round's :class:`al_lib.strategies.Strategy`, from params.yaml ``heuristic``."""
    return strategy_from(params.heuristic, params.strategy_options, len(params.classes))


def initial_strategy(params: Params):
    """The strategy of params.yaml ``initial_strategy`` (simulation's round-0 labels)."""
    return strategy_from(params.initial_strategy, params.initial_options, len(params.classes))


def round_setting(params: Params, option: str, default):
    """The value of the round's own ``option`` of ``heuristic`` (see :data:`ROUND_SETTINGS`)."""
    return params.strategy_options.get(option, default)
