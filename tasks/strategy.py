"""The workspace's acquisition strategy: one al_lib strategy object, built from params.yaml."""

from __future__ import annotations

from tasks.workspace import Params

#: BatchBALD's candidates in a workspace: the top 2048 by BALD whatever the query size, so a
#: changed ``query_size`` re-runs only the query step (see al_lib.strategies.BatchBALDStrategy).
BATCH_BALD_CANDIDATES = 2048


def workspace_strategy(params: Params):
    """The round's :class:`al_lib.strategies.Strategy`, from params.yaml ``heuristic``."""
    from al_lib.strategies import get_strategy  # torch: only on use

    if params.heuristic == "batch_bald":
        return get_strategy("batch_bald", num_candidates=BATCH_BALD_CANDIDATES)
    return get_strategy(params.heuristic)
