import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from al_lib.data import load_digits
from al_lib.loop import NoisyOracle, simulate, simulate_with_baseline
from al_lib.strategies import get_strategy


@pytest.fixture(scope="module")
def digits_split():
    ds = load_digits(flatten=True)
    perm = np.random.default_rng(0).permutation(len(ds))
    return Subset(ds, perm[500:]), Subset(ds, perm[:500])


def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))


FAST_FIT = dict(max_epochs=60, val_fraction=0, lr=3e-3, batch_size=32)


def run(split, strategy, seed, **kw):
    pool, test = split
    torch.manual_seed(seed)  # model init; simulate's own randomness comes from `seed`
    args = dict(initial_labels=20, query_size=10, rounds=8, iterations=20, fit_kwargs=FAST_FIT, seed=seed, progress=False)
    model_factory = kw.pop("model_factory", mlp)
    args.update(kw)
    return simulate(pool, model_factory, test_set=test, strategy=strategy, **args)


def test_bald_beats_random_at_the_same_label_budget(digits_split):
    """Gal et al. 2017's finding, on real digits, averaged over seeds with a margin."""
    seeds = range(6)
    bald = np.array([run(digits_split, "bald", s).accuracy.values for s in seeds])
    rand = np.array([run(digits_split, "random", s).accuracy.values for s in seeds])
    half = bald.shape[1] // 2
    assert bald[:, half:].mean() >= rand[:, half:].mean() + 0.01, (bald.mean(0), rand.mean(0))


def test_rows_budget_and_determinism(digits_split):
    a = run(digits_split, "entropy", 3, rounds=3, pool_subsample=200)
    b = run(digits_split, "entropy", 3, rounds=3, pool_subsample=200)
    assert a.n_labelled.tolist() == [20, 30, 40]
    assert a.queried_ids.tolist() == b.queried_ids.tolist()
    assert a.queried_ids.iloc[-1] == []  # the last round only trains and evaluates
    pd_cols = {"round", "n_labelled", "accuracy", "nll", "ece", "macro_f1", "seconds_train", "seconds_score"}
    assert pd_cols <= set(a.columns)
    queried = [i for ids in a.queried_ids for i in ids]
    assert len(queried) == len(set(queried)) == 20


def test_a_strategy_object_queries_as_its_name(digits_split):
    by_name = run(digits_split, "power_entropy", 1, rounds=2, pool_subsample=150)
    by_object = run(digits_split, get_strategy("power_entropy"), 1, rounds=2, pool_subsample=150)
    assert by_name.queried_ids.tolist() == by_object.queried_ids.tolist()
    hot = run(digits_split, get_strategy("power_entropy", temperature=1e-6), 1, rounds=2, pool_subsample=150)
    top = run(digits_split, "entropy", 1, rounds=2, pool_subsample=150)
    assert sorted(hot.queried_ids.iloc[0]) == sorted(top.queried_ids.iloc[0])  # T -> 0 is top-k


def test_batch_bald_gets_consistent_masks(digits_split, caplog):
    with caplog.at_level("WARNING", logger="al_lib.acquisition"):
        df = run(digits_split, "batch_bald", 2, rounds=2, pool_subsample=100)
    assert len(df.queried_ids.iloc[0]) == 10 and "consistent" not in caplog.text


def test_label_noise_is_counted(digits_split):
    df = run(digits_split, "random", 0, rounds=3, label_noise=0.5)
    assert 10 <= df.n_noisy_labels.iloc[-1] <= 30  # ~half of 40 labels


def test_noisy_oracle_flips_to_a_wrong_class_at_the_given_rate():
    targets = np.arange(10).repeat(1000)
    oracle = NoisyOracle(targets, 10, noise=0.3, seed=0)
    answers = oracle(np.arange(len(targets)))
    flipped = answers != targets
    assert abs(flipped.mean() - 0.3) < 0.02
    assert oracle.n_flipped == flipped.sum()
    # Wrong answers are spread over the 9 other classes.
    counts = np.bincount((answers[flipped] - targets[flipped]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 0.7 * counts[1:].mean()
    assert (NoisyOracle(targets, 10, noise=0.0, seed=0)(np.arange(50)) == targets[:50]).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        NoisyOracle(targets, 10, noise=1.5)


def test_random_baseline_arm_shares_seed_initial_labels_and_weights(digits_split):
    pool, test = digits_split
    args = dict(test_set=test, initial_labels=20, query_size=10, rounds=2, iterations=3,
                fit_kwargs={**FAST_FIT, "max_epochs": 8}, pool_subsample=100, seed=4, progress=False)
    model = mlp()
    both = simulate_with_baseline(pool, lambda: model, strategy="bald", **args)
    assert both["strategy"].tolist() == ["bald", "bald", "random", "random"]
    assert both.groupby("strategy")["n_labelled"].apply(list).to_dict() == {"bald": [20, 30], "random": [20, 30]}
    # The reference arm is exactly `simulate` with random acquisition from the same start.
    alone = simulate(pool, lambda: copy.deepcopy(model), strategy="random", **args)
    assert both.attrs["initial_ids"] == alone.attrs["initial_ids"]
    rand = both[both["strategy"] == "random"].reset_index(drop=True)
    assert rand["queried_ids"].tolist() == alone["queried_ids"].tolist()
    assert rand["accuracy"].tolist() == alone["accuracy"].tolist()
    # ... and the arms differ in what they query, not in where they start.
    bald = both[both["strategy"] == "bald"].reset_index(drop=True)
    assert bald["accuracy"].iloc[0] == rand["accuracy"].iloc[0]
    assert bald["queried_ids"].iloc[0] != rand["queried_ids"].iloc[0]
    with pytest.raises(ValueError, match="must differ"):
        simulate_with_baseline(pool, mlp, strategy="random", **args)


@pytest.mark.parametrize("strategy", ["badge", "coreset", "typiclust", "probcover", "epig", "class_balanced"])
def test_embedding_strategies_run_in_simulate_by_name(digits_split, strategy):
    """simulate (and the study, which calls it with a name) runs every embedding strategy: the
    labelled set, target set and features are provided; probcover's δ is chosen automatically."""
    quick = dict(rounds=2, pool_subsample=120, iterations=4, fit_kwargs={**FAST_FIT, "max_epochs": 3})
    frame = run(digits_split, strategy, 2, **quick)
    assert frame.n_labelled.tolist() == [20, 30]
    queried = frame.queried_ids.iloc[0]
    assert len(queried) == len(set(queried)) == 10
    assert not set(queried) & set(frame.attrs["initial_ids"])
    assert run(digits_split, strategy, 2, **quick).queried_ids.iloc[0] == queried


def test_a_validation_set_outside_the_pool_early_stops_every_round(digits_split):
    pool, test = digits_split
    fit_kwargs = {"max_epochs": 15, "patience": 1, "val_fraction": 0.0, "lr": 3e-2, "batch_size": 32}
    args = dict(test_set=Subset(test, range(200, 400)), initial_labels=20, query_size=10, rounds=2, iterations=2, seed=0, progress=False,
                fit_kwargs=fit_kwargs, strategy="random")
    fixed = simulate(pool, mlp, **args)
    stopped = simulate(pool, mlp, val_set=Subset(test, range(200)), **args)
    assert fixed.epochs.tolist() == [15, 15]  # no validation: all epochs
    assert all(e < 15 for e in stopped.epochs)  # early stopping on the given set
    assert stopped.n_labelled.tolist() == [20, 30]  # which costs no labels


def test_calibration_is_fitted_each_round_and_shares_the_runs_seeds(digits_split):
    fit_kwargs = dict(FAST_FIT, max_epochs=15, val_fraction=0.5)
    quick = dict(initial_labels=40, rounds=2, iterations=4, pool_subsample=100, fit_kwargs=fit_kwargs)
    plain = run(digits_split, "bald", 4, **quick)
    scaled = run(digits_split, "bald", 4, calibration="temperature", **quick)
    assert (scaled.temperature > 0).all() and "calibration_skipped" not in scaled
    # the same training and test MC samples as the uncalibrated run: its metrics are the "before"
    assert scaled.ece_uncalibrated.iloc[0] == pytest.approx(plain.ece.iloc[0])
    assert scaled.nll_uncalibrated.iloc[0] == pytest.approx(plain.nll.iloc[0])
    assert scaled.epochs.iloc[0] == plain.epochs.iloc[0]
    with pytest.raises(ValueError, match="calibration must be one of"):
        run(digits_split, "bald", 4, calibration="platt", **quick)


def test_a_deep_ensemble_trains_its_members_on_their_own_and_is_calibrated(digits_split):
    """Each round fits every member on its own (not the mixture's loss) on one validation split,
    and the calibrator is fitted on that split from one MC sample per member."""
    from al_lib.bayesian import Ensemble

    fit_kwargs = dict(FAST_FIT, max_epochs=10, val_fraction=0.5, min_samples_per_epoch=640)
    frame = run(digits_split, "bald", 2, model_factory=lambda: Ensemble([mlp(), mlp(), mlp()]),
                initial_labels=40, rounds=2, iterations=3, pool_subsample=100, fit_kwargs=fit_kwargs,
                calibration="temperature")
    assert frame.n_labelled.tolist() == [40, 50] and (frame.temperature > 0).all()
    assert "calibration_skipped" not in frame and (frame.accuracy > 0.3).all(), frame.accuracy.tolist()  # 20-25 training labels; chance 0.1
    with pytest.raises(ValueError, match="exactly 3 MC samples"):
        run(digits_split, "bald", 2, model_factory=lambda: Ensemble([mlp(), mlp(), mlp()]), rounds=1,
            iterations=4, fit_kwargs=fit_kwargs)


def test_a_checkpointed_run_killed_mid_way_resumes_with_the_same_draws(digits_split, tmp_path, monkeypatch):
    """A run that dies in round 3 goes on from its checkpoint: the same queries, labels and noisy
    answers as a run never interrupted, and the rounds already done are not trained again."""
    import json

    import al_lib.loop as loop

    settings = dict(rounds=6, label_noise=0.2, pool_subsample=300)
    whole = run(digits_split, "bald", 3, checkpoint=tmp_path / "whole.json", **settings)
    assert whole.attrs["resumed_rounds"] == 0

    calls = {"n": 0}
    acquire = loop.acquire

    def dies_in_round_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed")
        return acquire(*args, **kwargs)

    path = tmp_path / "cut" / "run.json"
    monkeypatch.setattr(loop, "acquire", dies_in_round_3)
    with pytest.raises(RuntimeError, match="killed"):
        run(digits_split, "bald", 3, checkpoint=path, **settings)
    assert len(json.loads(path.read_text())["rows"]) == 3
    monkeypatch.setattr(loop, "acquire", acquire)

    trained = []
    fit_members = loop.fit_members
    monkeypatch.setattr(loop, "fit_members", lambda *a, **k: trained.append(1) or fit_members(*a, **k))
    resumed = run(digits_split, "bald", 3, checkpoint=path, **settings)
    assert resumed.attrs["resumed_rounds"] == 3 and len(trained) == 3
    assert resumed["queried_ids"].tolist() == whole["queried_ids"].tolist()
    assert resumed["n_labelled"].tolist() == whole["n_labelled"].tolist()
    assert resumed["n_noisy_labels"].tolist() == whole["n_noisy_labels"].tolist()
    np.testing.assert_allclose(resumed["accuracy"], whole["accuracy"], atol=1e-6)
    np.testing.assert_allclose(resumed["nll"], whole["nll"], rtol=1e-5)
    labels = [{k: v for k, v in json.loads(f.read_text())["labels"].items() if k != "labelled_at"}
              for f in (path, tmp_path / "whole.json")]
    assert labels[0] == labels[1]  # ids, answers (noise included), rounds, sources; not the clock

    # Another run's checkpoint is refused, naming the file and what differs; nothing is overwritten.
    before = path.read_text()
    with pytest.raises(ValueError, match=r"run\.json: cannot resume .*query_size"):
        run(digits_split, "bald", 3, checkpoint=path, **{**settings, "query_size": 5})
    assert path.read_text() == before
    path.write_text('{"version": 1, "rows": [')  # cut short mid-write by something other than us
    with pytest.raises(ValueError, match=r"run\.json: cannot resume from this checkpoint"):
        run(digits_split, "bald", 3, checkpoint=path, **settings)
    with pytest.raises(ValueError, match="stopping"):
        run(digits_split, "bald", 3, checkpoint=tmp_path / "s.json", stopping=[{"name": "label_budget", "budget": 50}])
