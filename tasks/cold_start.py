"""Cold start: the initial labels chosen by TypiClust or ProbCover before any model is trained.

Round 0 has no trained model, so the embedding comes from the model that params.yaml names, as
built before training: with ``model.weights`` (a local pretrained state dict, e.g. an
ImageNet-pretrained torchvision backbone) its backbone's features, the input of its last
``nn.Linear`` (the new head), MC-averaged like every round's features. Without weights that
network is randomly initialised: its features are a random projection of the pixels, usable but
weak, and a warning says so. ``initial_strategy: random`` (the default) needs no features.
"""

from __future__ import annotations

import logging

import numpy as np
from torch.utils.data import Subset

from al_lib.acquisition import acquire
from tasks.datasets import load_workspace_data
from tasks.seeds import round_seed
from tasks.strategy import initial_strategy
from tasks.train import build_workspace_model
from tasks.workspace import Workspace, model_spec

logger = logging.getLogger(__name__)


def cold_start_ids(ws: Workspace, ids, n: int, *, device=None) -> np.ndarray:
    """Pick ``n`` of the pool samples ``ids`` with params.yaml's ``initial_strategy``.

    Parameters
    ----------
    ws : Workspace
    ids : sequence of str [N], unlabelled pool ids (any order; the picks do not depend on it)
    n : int, ``0 <= n <= N``
    device : the inference device (None: CUDA when present)

    Returns
    -------
    ids : ndarray of str [n], in acquisition order. The same for the same params and pool: the
        seeds are (seed, round 0, "initial") for the selection and (…, "initial-mc") for the MC pass.
    """
    inputs = ws.inputs()
    params = inputs.params
    strategy = initial_strategy(params)
    if model_spec(params, ws.root).weights is None:
        logger.warning("initial_strategy %s: model %r has no weights file in params.yaml, so its features come "
                       "from a randomly initialised network (a random projection of the pixels); give "
                       "model.weights (a local pretrained state dict) for a meaningful embedding",
                       params.initial_strategy, params.model.get("name"))
    pool = load_workspace_data(ws, inputs).state.pool
    where = {sid: i for i, sid in enumerate(pool.ids)}
    ordered = sorted(str(i) for i in ids)
    subset = Subset(pool, [where[i] for i in ordered])
    model = build_workspace_model(ws, params)
    positions, _ = acquire(model, subset, strategy, n, iterations=params.mc_iterations,
                           batch_size=params.inference.get("batch_size", 256), device=device, progress=False,
                           mc_seed=round_seed(params.seed, 0, "initial-mc"),
                           select_seed=round_seed(params.seed, 0, "initial"))
    chosen = np.asarray(ordered, dtype=str)[positions]
    logger.info("initial labels: %d of %d pool images chosen by %s on the untrained model's features",
                len(chosen), len(ordered), params.initial_strategy)
    return chosen


def pick_initial(ws: Workspace, queryable, n: int) -> np.ndarray:
    """The ``n`` initial picks of the pool ids ``queryable`` by params ``initial_strategy``, seeded
    ((seed, round 0, "initial")): a random draw, or :func:`cold_start_ids`. Sorted ids [n].
    Simulation (tasks/oracle.py) and a real workspace's cold-start query pick the same way."""
    params = ws.params()
    queryable = np.asarray(queryable, dtype=str)
    n = min(n, len(queryable))
    if params.initial_strategy == "random":
        from tasks.seeds import round_rng

        chosen = round_rng(params.seed, 0, "initial").choice(queryable, size=n, replace=False)
    else:
        chosen = cold_start_ids(ws, queryable, n)
    return np.sort(np.asarray(chosen, dtype=str))


def needs_cold_start(ws: Workspace, plan) -> bool:
    """Whether the round plan (:func:`tasks.rounds.plan_round`) is round 0 with no label to train
    on and an empty inbox: the case :func:`cold_start_query` answers instead of failing."""
    from tasks.rounds import trainable_labels

    return plan.action == "resume" and plan.round == 0 and not ws.inbox_files() and trainable_labels(ws) == 0


def cold_start_query(ws: Workspace, *, device=None) -> dict | None:
    """A real workspace's first batch for annotators, when it has no label to train on.

    Called by ``al round`` (before Prefect starts: no model is trained, so no flow is needed) when
    data/labels.csv holds no trainable label and the inbox is empty. It picks ``initial_labels``
    (params.yaml; ``query_size`` when that is 0) of the queryable pool (not held out) with
    ``initial_strategy`` and exports them as round 0's queries, with the query step's writers and
    paths (``data/queries/round-0.csv`` + ``round-0.labelstudio.json``: ``al labelstudio push``
    pushes round 0 by default). No model exists yet, so nothing is predicted: the Label Studio
    tasks carry no prediction, and the CSV's ``score``, ``predicted_label`` and ``predicted_prob``
    are empty.

    Round numbering: the export is committed ("round 0: cold-start query ...") but **not tagged**:
    round 0 is not finished, it has no model. Once the answers are in data/inbox/, the next
    ``al round`` resumes round 0 as a normal round (ingest, train, score, query), which replaces
    round-0.csv with the trained model's queries and tags ``round-0``; the cold-start picks stay in
    git history (that commit) and in labels.csv (round 0).

    Returns None when a cold-start query already waits (a rerun: nothing changes), else a summary
    (``ids``, ``strategy``, ``files``, ``commit``).
    """
    from al_lib.export import label_studio_tasks, query_frame, write_queries
    from tasks import git_repo
    from tasks.rounds import queryable_ids
    from tasks.workspace import QUERIES, ROUND_FILE

    csv_path, json_path = ws.query_paths(0)
    if csv_path.is_file() and json_path.is_file():
        return None
    params = ws.params()
    manifest = ws.manifest()
    queryable = queryable_ids(ws)
    n = params.initial_labels or params.query_size
    chosen = pick_initial(ws, queryable.to_numpy(), n)
    k = len(chosen)
    queries = query_frame(list(chosen), np.full(k, np.nan), None, params.classes)  # no model: no prediction
    paths = manifest.set_index("id")["path"]
    tasks = label_studio_tasks(queries, {i: paths[i] for i in queries["id"]}, model_version="cold-start")
    ws.write_round(0)
    files = write_queries(ws.path(QUERIES), 0, queries, tasks)
    commit = git_repo.commit_paths(ws.root, [QUERIES, ROUND_FILE],
                                   f"round 0: cold-start query, {k} images chosen by {params.initial_strategy}")
    logger.info("cold-start query: %d images by %s in %s", k, params.initial_strategy, files[0])
    return {"ids": list(chosen), "strategy": params.initial_strategy, "n_pool": len(queryable),
            "files": [str(f.relative_to(ws.root)) for f in files], "commit": commit}
