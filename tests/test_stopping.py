import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from al_lib.stopping import (
    ClassificationChange, DeltaF, KappaAverage, LabelBudget, LowUncertainty, MetricPlateau, OverallUncertainty,
    RoundRecord, StopDecision, check_criteria, cohen_kappa, criteria_from_config, delta_f, fired, get_criterion,
    normalised_entropy, summary,
)
from al_lib.transforms import ConfigError

IDS = np.arange(8)


def rounds_of_predictions(*predictions, probs=None):
    return [RoundRecord(r, 10 * (r + 1), stop_ids=IDS, stop_predictions=np.asarray(p))
            for r, p in enumerate(predictions)]


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("seed", range(5))
def test_cohen_kappa_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 50)
    b = np.where(rng.random(50) < 0.7, a, rng.integers(0, 4, 50))
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))


def test_cohen_kappa_by_hand_and_its_edge_cases():
    # 4 samples: agree on 3; marginals a = (2, 2), b = (1, 3): p_e = (2*1 + 2*3) / 16 = 0.5
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((0.75 - 0.5) / 0.5)
    assert cohen_kappa([2, 2, 2], [2, 2, 2]) == 1.0  # sklearn: NaN (0/0)
    assert cohen_kappa([0, 0], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        cohen_kappa([0, 1], [0])


@pytest.mark.parametrize("seed", range(5))
def test_delta_f_is_one_minus_f1_of_new_against_old(seed):
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 3, 40)
    new = np.where(rng.random(40) < 0.8, old, rng.integers(0, 3, 40))
    for positive in (0, 1, 2):
        f1 = f1_score(old == positive, new == positive, zero_division=1.0)
        assert delta_f(old, new, positive) == pytest.approx(1 - f1)


def test_delta_f_by_hand():
    # a = 2 both positive, b = 1 old only, c = 1 new only: 1 - 4 / 6
    assert delta_f([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(1 - 4 / 6)
    assert delta_f([0, 0], [0, 0]) == 0.0  # neither predicts the positive class: no change


def test_normalised_entropy():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(normalised_entropy(probs), [0.0, 1.0, math.log(2) / math.log(3)])


# --------------------------------------------------------------------------- the criteria


def test_kappa_average_fires_on_stable_predictions_and_says_why():
    base = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    changed = base.copy()
    changed[0] = 2
    crit = KappaAverage(threshold=0.99, window=3)
    history = rounds_of_predictions(changed, base, base, base, base)
    decision = crit.check(history)
    assert decision.stop and decision.value == 1.0
    assert decision.message == "kappa_average fired — mean kappa 1.000 ≥ 0.99 over the last 3 rounds"
    # a change and its undoing inside the window: mean of (kappa, kappa, 1)
    history = rounds_of_predictions(base, changed, base, base)
    decision = crit.check(history)
    kappa = cohen_kappa_score(base, changed)
    expected = np.mean([kappa, kappa, 1.0])
    assert not decision.stop and decision.value == pytest.approx(expected)
    assert decision.message.startswith("kappa_average not yet: mean kappa")


def test_first_rounds_never_stop():
    base = np.zeros(8, dtype=int)
    for crit in (KappaAverage(), DeltaF(), ClassificationChange(), MetricPlateau("acc", patience=2)):
        for n in range(1, (crit.window if hasattr(crit, "window") else 1) + 1):
            history = [RoundRecord(r, 10, {"acc": 0.5}, stop_ids=IDS, stop_predictions=base) for r in range(n)]
            decision = crit.check(history)
            assert not decision.stop and "needs" in decision.reason, (crit, n, decision)
    with pytest.raises(ValueError, match="empty"):
        KappaAverage().check([])


def test_a_round_without_stop_set_predictions_breaks_the_run():
    base = np.zeros(8, dtype=int)
    history = rounds_of_predictions(base, base, base)
    history.insert(2, RoundRecord(99, 10))  # a round before the criterion was configured
    decision = KappaAverage(window=2).check(history)
    assert not decision.stop and "has 1" in decision.reason
    with pytest.raises(ValueError, match="no stop-set predictions"):
        KappaAverage().check([*history, RoundRecord(5, 10)])


def test_a_changed_stop_set_is_an_error():
    a = RoundRecord(0, 10, stop_ids=np.arange(3), stop_predictions=[0, 1, 0])
    b = RoundRecord(1, 10, stop_ids=np.arange(1, 4), stop_predictions=[0, 1, 0])
    with pytest.raises(ValueError, match="same ids every round"):
        ClassificationChange().check([a, b])


def test_delta_f_fires_when_every_change_in_the_window_is_small():
    a = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    b = a.copy()
    b[4] = 1  # ΔF = 1 - 8/9 ≈ 0.111
    assert not DeltaF(threshold=0.05, window=2).check(rounds_of_predictions(a, b, b)).stop
    decision = DeltaF(threshold=0.05, window=2).check(rounds_of_predictions(b, a, a, a))
    assert decision.stop and decision.value == 0.0


def test_classification_change_threshold():
    a = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    b = a.copy()
    b[:1] = 2
    assert ClassificationChange().check(rounds_of_predictions(a, a)).stop
    decision = ClassificationChange().check(rounds_of_predictions(a, b))
    assert not decision.stop and decision.value == pytest.approx(1 / 8)
    assert "1 of 8 stop-set predictions changed class since round 0" in decision.reason
    assert ClassificationChange(threshold=0.125).check(rounds_of_predictions(a, b)).stop


def test_overall_uncertainty():
    sure = np.array([[0.999, 0.001]] * 4)
    unsure = np.array([[0.5, 0.5]] * 4)
    assert OverallUncertainty(0.05).check([RoundRecord(0, 10, stop_probs=sure)]).stop
    decision = OverallUncertainty(0.05).check([RoundRecord(0, 10, stop_probs=unsure)])
    assert not decision.stop and decision.value == pytest.approx(1.0)
    assert RoundRecord(0, 1, stop_probs=unsure).stop_predictions.tolist() == [0, 0, 0, 0]  # ties: lower class


def test_label_budget_total_and_acquired():
    history = [RoundRecord(0, 20), RoundRecord(1, 40)]
    assert LabelBudget(40).check(history).stop
    assert not LabelBudget(41).check(history).stop
    decision = LabelBudget(20, count="acquired").check(history)
    assert decision.stop and decision.reason == "20 labels acquired since round 0 ≥ budget 20"


def test_label_budget_agrees_with_baal():
    from baal.active import ActiveLearningDataset as BaalDataset
    from baal.active.stopping_criteria import LabellingBudgetStoppingCriterion

    ds = BaalDataset(list(range(100)))
    ds.label_randomly(20)
    baal = LabellingBudgetStoppingCriterion(ds, labelling_budget=15)
    history = [RoundRecord(0, 20)]
    for n in (10, 5, 1):
        ds.label_randomly(n)
        history.append(RoundRecord(len(history), len(ds)))
        assert LabelBudget(15, count="acquired").check(history).stop == baal.should_stop({}, [])


def test_low_uncertainty_agrees_with_baal_and_skips_nan():
    from baal.active import ActiveLearningDataset as BaalDataset
    from baal.active.stopping_criteria import LowAverageUncertaintyStoppingCriterion

    baal = LowAverageUncertaintyStoppingCriterion(BaalDataset(list(range(4))), avg_uncertainty_thresh=0.1)
    for scores in ([0.05, 0.1, 0.12], [0.01, 0.02], [0.1, 0.1]):
        ours = LowUncertainty(0.1).check([RoundRecord(0, 1, pool_scores=scores)])
        assert ours.stop == baal.should_stop({}, scores)
    assert LowUncertainty(0.1).check([RoundRecord(0, 1, pool_scores=[0.01, np.nan])]).stop
    decision = LowUncertainty(0.1).check([RoundRecord(0, 1, pool_scores=[np.nan, np.nan])])
    assert not decision.stop and "no uncertainty scores" in decision.reason


def test_metric_plateau_and_baal():
    from baal.active import ActiveLearningDataset as BaalDataset
    from baal.active.stopping_criteria import EarlyStoppingCriterion

    values = [0.5, 0.6, 0.7, 0.70001, 0.70002, 0.70001, 0.8, 0.8, 0.8, 0.8]
    baal = EarlyStoppingCriterion(BaalDataset(list(range(4))), "acc", patience=2, epsilon=1e-4)
    history = []
    for r, v in enumerate(values):
        history.append(RoundRecord(r, r, {"acc": v}))
        ours = MetricPlateau("acc", patience=2, epsilon=1e-4).check(history).stop
        theirs = baal.should_stop({"acc": v}, [])
        if r >= 2:  # BaaL also stops on `patience` values; from patience + 1 values on, the same
            assert ours == theirs, (r, ours, theirs)
    assert MetricPlateau("acc", patience=2).check(history).reason.startswith("acc moved 0 ≤ 0.0001 over the last 2")
    history[-2] = RoundRecord(8, 8, {"acc": float("nan")})
    assert not MetricPlateau("acc", patience=2).check(history).stop
    assert "has 0" in MetricPlateau("f1", patience=2).check(history).reason  # a metric never recorded


def test_stop_set_criteria_agree_with_small_text():
    """small-text 1.4 (a test-only reference) decides the same on random prediction sequences."""
    st = pytest.importorskip("small_text.stopping_criteria")
    rng = np.random.default_rng(0)
    for trial in range(20):
        n_rounds, s = 8, 30
        preds = [rng.integers(0, 2, s)]
        for _ in range(n_rounds - 1):  # a few flips per round, fewer as the rounds go on
            flip = rng.random(s) < rng.choice([0.0, 0.02, 0.1])
            preds.append(np.where(flip, 1 - preds[-1], preds[-1]))
        sure = rng.choice([0.6, 0.99])
        probs = [np.where(p[:, None] == 1, [[1 - sure, sure]], [[sure, 1 - sure]]) for p in preds]
        pairs = [(KappaAverage(0.9, 2), st.KappaAverage(2, window_size=2, kappa=0.9)),
                 (DeltaF(0.05, 2), st.DeltaFScore(2, window_size=2, threshold=0.05)),
                 (ClassificationChange(0.05), st.ClassificationChange(2, threshold=0.05)),
                 (OverallUncertainty(0.2), st.OverallUncertainty(2, threshold=0.2))]
        for ours, theirs in pairs:
            history = []
            for r, (p, q) in enumerate(zip(preds, probs)):
                history.append(RoundRecord(r, r, stop_ids=np.arange(s), stop_probs=q))
                expected = theirs.stop(predictions=p, proba=q, indices_stopping=np.arange(s))
                assert ours.check(history).stop == expected, (trial, r, ours)


# --------------------------------------------------------------------------- config


def test_criteria_from_config_and_errors_name_entry_and_field():
    criteria = criteria_from_config([{"name": "kappa_average", "threshold": 0.98},
                                     {"name": "label_budget", "budget": 100}])
    assert [c.name for c in criteria] == ["kappa_average", "label_budget"]
    assert criteria[0].options() == {"threshold": 0.98, "window": 3}
    cases = [([{"name": "kappa"}], "stopping[0].name"),
             ([{"name": "label_budget"}], "stopping[0].budget"),
             ([{"name": "kappa_average"}, {"name": "delta_f", "threshold": 2}], "stopping[1].threshold"),
             ([{"name": "delta_f", "windows": 2}], "stopping[0].windows"),
             ([{"name": "metric_plateau", "metric": "acc", "patience": True}], "stopping[0].patience"),
             ([["kappa_average"]], "stopping[0].name"),
             ({"name": "kappa_average"}, "stopping")]
    for entries, key in cases:
        with pytest.raises(ConfigError) as err:
            criteria_from_config(entries)
        assert err.value.key == key, (entries, err.value)
    assert criteria_from_config(None) == []
    assert get_criterion(criteria[0]) is criteria[0]


def test_check_criteria_and_fired():
    history = [RoundRecord(0, 50, pool_scores=[0.5])]
    decisions = check_criteria([LowUncertainty(0.1), LabelBudget(50)], history)
    assert [d.stop for d in decisions] == [False, True]
    assert [d.criterion for d in fired(decisions)] == ["label_budget"]
    assert decisions[1].as_dict() == {"criterion": "label_budget", "stop": True,
                                      "reason": "50 labels ≥ budget 50", "value": 50.0}
    assert StopDecision.from_dict(decisions[1].as_dict()) == decisions[1]
    assert summary(decisions) == ["stopping: label_budget fired — 50 labels ≥ budget 50",
                                  f"stopping: {decisions[0].message}"]
    assert decisions[0].message.startswith("low_uncertainty not yet: mean pool uncertainty 0.5 ≥ 0.1")


# --------------------------------------------------------------------------- simulate


def test_simulate_stops_early_and_says_why():
    import torch
    from torch import nn
    from torch.utils.data import Subset

    from al_lib.data import load_digits
    from al_lib.loop import simulate

    ds = load_digits(flatten=True)
    perm = np.random.default_rng(0).permutation(len(ds))
    pool, test = Subset(ds, perm[300:]), Subset(ds, perm[:300])

    def run(rounds, stopping=None):
        torch.manual_seed(0)  # model init only, as tests/test_loop.py
        return simulate(pool, lambda: nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10)),
                        test_set=test, strategy="entropy", initial_labels=20, query_size=10, rounds=rounds,
                        iterations=3, pool_subsample=100, seed=3, progress=False, stopping=stopping, stop_set_size=50,
                        fit_kwargs=dict(max_epochs=8, val_fraction=0, lr=3e-3, batch_size=32))

    criteria = [{"name": "label_budget", "budget": 40}, {"name": "kappa_average", "threshold": 1.0, "window": 1},
                {"name": "low_uncertainty", "threshold": 0.0}]
    stopped = run(6, criteria)
    assert stopped.attrs["stopped_at"] == 2 and len(stopped) == 3
    assert stopped["stop"].tolist() == [False, False, True]
    assert stopped["stopping"].iloc[2][0] == "label_budget fired — 40 labels ≥ budget 40"
    assert stopped["stopping"].iloc[0][1] == "kappa_average not yet: needs stop-set predictions of 2 rounds in a row, has 1"
    assert stopped["stopping"].iloc[1][2].startswith("low_uncertainty not yet: mean pool uncertainty ")
    assert stopped["queried_ids"].iloc[2] == []  # the stopping round's picks are not labelled
    plain = run(3)  # the same run without criteria: the same rows up to the stop
    assert stopped["queried_ids"].iloc[:2].tolist() == plain["queried_ids"].iloc[:2].tolist()
    np.testing.assert_array_equal(stopped["accuracy"], plain["accuracy"])
    assert plain.attrs["stopped_at"] is None and "stop" not in plain
