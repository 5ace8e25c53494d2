"""A torchvision resnet18 through `al round` on real images: random init, then a local state dict.

One small class-folder workspace (MNIST digits as PNGs, resized to 16x16 and given to the network as
RGB with ImageNet statistics): round 0 trains a randomly initialised resnet18 with MC dropout added
before its new head; then params.yaml switches to a locally saved state dict with a frozen
backbone and training augmentation, and ``al round --rerun`` re-runs exactly train, score and query.
The score step reloads the checkpoint with the same model spec.
"""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.utils.data import Subset

from al_lib.bayesian import Ensemble
from al_lib.heuristics import predictive_distribution
from al_lib.inference import predict_mc
from al_lib.seeding import isolated_torch_rng
from flows.round import al_round
from tasks.datasets import load_workspace_data
from tasks.seeds import round_seed
from tasks.train import load_workspace_model, train_step
from tasks.workspace import SCORES

ONE_EPOCH = {"max_epochs": 1, "patience": 1, "val_fraction": 0.2, "batch_size": 16}


def _set_model(ws, model):
    params = yaml.safe_load(ws.path("params.yaml").read_text())
    ws.path("params.yaml").write_text(yaml.safe_dump({**params, "model": model}, sort_keys=False))


def _queries(ws):
    return pd.read_csv(ws.query_paths(0)[0], dtype={"id": str}, keep_default_na=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("prefect_api")
def test_resnet18_random_init_then_local_weights(make_workspace, tmp_path):
    ws = make_workspace(training=ONE_EPOCH, mc_iterations=3, pool_subsample=30)
    _set_model(ws, {"name": "resnet18", "input_shape": [1, 16, 16]})
    first = al_round(str(ws.root), simulate=True)
    assert first["steps_run"] == ["validate", "train", "score", "query"]
    assert len(_queries(ws)) == 5 and 0 <= first["metrics"]["test_accuracy"] <= 1
    model = load_workspace_model(ws, ws.params())
    assert model.fc[1].weight.shape == (3, 512)

    weights = tmp_path / "resnet18-local.pt"  # outside the workspace: an absolute path
    from torchvision.models import resnet18

    with isolated_torch_rng(7):
        torch.save(resnet18().state_dict(), weights)
    _set_model(ws, {"name": "resnet18", "input_shape": [1, 16, 16], "weights": str(weights),
                    "freeze_backbone": True, "transforms": {"augment": {"hflip": 0.5, "crop_padding": 2}}})
    second = al_round(str(ws.root), rerun=True)
    assert second["steps_run"] == ["train", "score", "query"]

    params = ws.params()
    model = load_workspace_model(ws, params)
    saved = torch.load(weights, weights_only=True)
    state = model.state_dict()
    for key, value in saved.items():  # frozen: the backbone is the file's, BatchNorm statistics included
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(state[key], value), key
    # The score step's predictive distribution is what the reloaded checkpoint gives.
    scores = np.load(ws.path(SCORES))
    ids = [str(i) for i in scores["ids"][:6]]
    pool = load_workspace_data(ws, ws.inputs()).state.pool
    position = {sid: i for i, sid in enumerate(pool.ids)}
    probs = predict_mc(model, Subset(pool, [position[i] for i in ids]), iterations=params.mc_iterations,
                       seed=round_seed(params.seed, 0, "mc"), progress=False)
    np.testing.assert_allclose(predictive_distribution(probs), scores["mean_probs"][:6], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_ensemble_members_train_on_their_own(make_workspace):
    ws = make_workspace(labels="seed", training=ONE_EPOCH, mc_iterations=2)
    _set_model(ws, {"name": "gal_cnn", "input_shape": [1, 8, 8], "mc": "ensemble", "ensemble_size": 2,
                    "hidden": 16, "channels": 4})
    metrics = train_step(ws, 0, device="cpu")
    assert metrics["epochs"] == 1 and 0 <= metrics["test_accuracy"] <= 1
    model = load_workspace_model(ws, ws.params())
    assert isinstance(model, Ensemble) and len(model) == 2
    first, second = (m.classifier[-1].weight for m in model.members)
    assert not torch.equal(first, second)
