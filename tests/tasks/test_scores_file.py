"""The score step's file: the same arrays give the same bytes, and load back unchanged."""

import json
import time

import numpy as np
import pytest

from tasks.scores_file import load_scores, npz_bytes, write_scores
from tasks.workspace import SCORES, Params, Workspace


def _arrays():
    rng = np.random.default_rng(0)
    return {"ids": np.array(["a.png", "b.png", "c.png"]), "scores": rng.random(3).astype(np.float32),
            "mean_probs": rng.random((3, 2)).astype(np.float32)}


def test_npz_bytes_depend_on_the_arrays_only():
    first = npz_bytes(_arrays())
    time.sleep(2.1)  # np.savez's zip members carry the time, at 2-second resolution
    assert npz_bytes(_arrays()) == first
    other = _arrays()
    other["scores"][1] += np.float32(1e-6)
    assert npz_bytes(other) != first


def test_written_scores_load_back_exactly(tmp_path):
    ws = Workspace(tmp_path)
    plan = type("Plan", (), {"round": 2, "n_candidates": 5, "ids": ["a.png", "b.png", "c.png"]})()
    params = Params(classes=["x", "y"])
    summary = write_scores(ws, plan, params, _arrays())
    assert summary == {"round": 2, "n_candidates": 5, "n_scored": 3, "heuristic": params.heuristic,
                       "mc_iterations": params.mc_iterations}
    loaded = load_scores(ws)
    assert json.loads(str(loaded.pop("summary"))) == summary
    assert list(loaded) == list(_arrays())
    for name, value in _arrays().items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype
    assert ws.path(SCORES).read_bytes() == npz_bytes({"summary": np.array(json.dumps(summary)), **_arrays()})


def test_no_scores_yet_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no pool scores yet"):
        load_scores(Workspace(tmp_path))


@pytest.mark.parametrize("name", ["bald", "batch_bald", "badge", "typiclust", "class_balanced", "epig"])
def test_a_scored_pool_round_trips_through_the_file(tmp_path, name):
    """What a strategy's selection needs (joint rows, candidates' features, predicted classes, the
    labelled set) is written as plain arrays and read back as the same ScoredPool / LabelledSet."""
    import torch

    from al_lib.embedding_strategies import LabelledSet
    from tasks.scores_file import labelled_set, pool_arrays, scored_pool
    from tasks.strategy import strategy_from

    strategy = strategy_from(name, {"num_candidates": 4} if name == "batch_bald" else {}, 3)
    rng = np.random.default_rng(1)
    probs = torch.from_numpy(rng.dirichlet(np.ones(3), size=(10, 5)).transpose(0, 2, 1).astype(np.float32))
    if strategy.needs_target:
        strategy = strategy.with_target(probs[:4])
    scorer = strategy.pool_scorer(4, seed=0)
    scorer.update(probs if strategy.needs_probs else None, torch.from_numpy(rng.random((10, 6), dtype=np.float32)))
    scored = scorer.result()
    arrays = {"ids": np.array([f"{i}.png" for i in range(10)]), "scores": scored.scores,
              "mean_probs": probs.mean(-1).numpy(), **pool_arrays(scored, strategy, 3),
              "labelled_labels": np.array([0, 2]), "labelled_features": rng.random((2, 6), dtype=np.float32)}
    ws = Workspace(tmp_path)
    plan = type("Plan", (), {"round": 0, "n_candidates": 10, "ids": list(arrays["ids"])})()
    write_scores(ws, plan, Params(classes=["x", "y", "z"]), arrays)
    loaded = load_scores(ws)
    back = scored_pool(loaded, strategy)
    for field in ("scores", "joint_positions", "joint", "candidate_positions", "features", "candidate_probs",
                  "predicted"):
        want, got = getattr(scored, field), getattr(back, field)
        assert (want is None) == (got is None), field
        if want is not None:
            np.testing.assert_array_equal(got, want)
    assert back.n_classes == (3 if strategy.needs_features or strategy.needs_predicted else None)
    known = labelled_set(loaded)
    assert isinstance(known, LabelledSet) and known.labels.tolist() == [0, 2] and known.features.shape == (2, 6)
    picks = strategy.select(loaded["scores"], 3, seed=5, joint=back.joint, pool=back, labelled=known)
    assert picks.positions.tolist() == strategy.select(scored.scores, 3, seed=5, joint=scored.joint, pool=scored,
                                                       labelled=known).positions.tolist()
