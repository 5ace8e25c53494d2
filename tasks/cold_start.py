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
