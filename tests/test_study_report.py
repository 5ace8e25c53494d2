import numpy as np
import pandas as pd
import pytest

from al_lib.study import cells, experiments, write_record
from al_lib.study_report import labels_to_reach, records_frame, write_report


def _record(cell, accuracy, nll, minority=None, seconds_score=0.5):
    rows = [{"round": i, "n_labelled": n, "accuracy": a, "nll": l, "ece": 0.1, "macro_f1": a,
             "minority_f1": minority, "n_noisy_labels": 0, "epochs": 5, "seconds_train": 1.0,
             "seconds_eval": 0.1, "seconds_score": seconds_score, "n_scored": 100}
            for i, (n, a, l) in enumerate(zip(range(20, 20 + 10 * len(accuracy), 10), accuracy, nll))]
    return {"key": cell.key(), "config": cell.config(), "rows": rows, "minority_classes": [],
            "pool_size": 1000, "test_size": 300, "seconds": 2.0, "device": "cpu"}


def test_report_tables_findings_and_incomplete_sets(tmp_path):
    """Two seeds of the baseline (BALD better than Random) and one label-efficiency cell set."""
    folder = tmp_path / "cells"
    baseline = cells(experiments(quick=True, seeds=2)["baseline"], dataset="digits", quick=True)
    for c in baseline:
        good = c.strategy != "random"
        acc = [0.5, 0.7, 0.8, 0.9] if good else [0.5, 0.6, 0.65, 0.7]
        nll = [1.5, 1.0, 0.7, 0.4 + 0.02 * c.seed] if good else [1.5, 1.2, 1.1, 1.0 + 0.02 * c.seed]
        write_record(folder, _record(c, acc, nll))
    out = write_report(folder, tmp_path / "report.md")
    text = out.read_text()
    assert "**Quick run only**" in text
    # mean ± std over the two seeds at the last budget (50 labels): 0.41 ± 0.014
    assert "| standard | BALD | " in text and "0.410 ± 0.014" in text
    assert "6 of 6 cells recorded." in text  # the 2 seeds found are the expected set
    assert "At 50 labels BALD's test NLL is 0.410 against Random's 1.010 (+0.600): this agrees" in text
    assert "## Noise" in text and "Not run yet (0 of 18 cells)" in text
    assert (tmp_path / "report" / "baseline_accuracy.png").stat().st_size > 5000
    assert "](report/baseline_accuracy.png)" in text


def test_label_efficiency_medians_and_the_papers_ordering(tmp_path):
    folder = tmp_path / "cells"
    efficiency = cells(experiments(quick=True)["label_efficiency"], dataset="digits", quick=True)
    curves = {"batch_bald": [0.5, 0.91, 0.96, 0.97], "bald": [0.5, 0.85, 0.92, 0.96],
              "entropy": [0.5, 0.8, 0.9, 0.93], "variation_ratio": [0.5, 0.8, 0.9, 0.95],
              "random": [0.5, 0.6, 0.7, 0.8]}
    for c in efficiency:
        write_record(folder, _record(c, curves[c.strategy], [1.0] * 4))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "| BatchBALD | 30 [30, 30] | 40 [40, 40] | 105 / 225 (BatchBALD paper, batch 10) |" in text
    assert "| Random | > 50 (0 of 1 seeds reached it) |" in text
    assert "To 90%: BatchBALD 30 (papers 105), BALD 40 (papers 145), Random >50 (papers 255) — the papers' " \
           "ordering BatchBALD ≤ BALD < Random holds here." in text


def test_a_failed_ordering_says_whether_the_seeds_spread_covers_it(tmp_path):
    """Two seeds: BatchBALD reaches 95 % at 40 labels in one seed and never in the other, BALD at
    40 in both; BALD beats Random outside any overlap."""
    folder = tmp_path / "cells"
    efficiency = cells(experiments(quick=True, seeds=2)["label_efficiency"], dataset="digits", quick=True)
    curves = {("batch_bald", 0): [0.5, 0.91, 0.94, 0.97], ("batch_bald", 1): [0.5, 0.91, 0.96, 0.97],
              ("bald", 0): [0.5, 0.91, 0.92, 0.96], ("bald", 1): [0.5, 0.91, 0.92, 0.96]}
    for c in efficiency:
        if c.strategy in ("batch_bald", "bald", "random"):
            write_record(folder, _record(c, curves.get((c.strategy, c.seed), [0.5, 0.6, 0.7, 0.8]), [1.0] * 4))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "To 95%: BatchBALD 45 (papers 225), BALD 50 (papers 335), Random >50 (papers 835) — the papers' " \
           "ordering BatchBALD ≤ BALD < Random holds here." in text
    # BatchBALD at 50 and 40 labels [42.5, 47.5], BALD at 30 and 50 [35, 45]: out of order, overlapping.
    curves[("batch_bald", 0)] = [0.5, 0.91, 0.94, 0.96]
    curves[("bald", 0)] = [0.5, 0.96, 0.97, 0.97]
    for c in efficiency:
        if c.strategy in ("batch_bald", "bald"):
            write_record(folder, _record(c, curves[(c.strategy, c.seed)], [1.0] * 4))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "does **not** hold here: BatchBALD needs +5 labels against BALD, within the spread over seeds " \
           "(their quartile ranges overlap): more seeds decide." in text
    for c in efficiency:  # BatchBALD never reaches 95 %
        if c.strategy == "batch_bald":
            write_record(folder, _record(c, [0.5, 0.91, 0.94, 0.94], [1.0] * 4))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "does **not** hold here: BatchBALD did not reach it in most seeds, BALD did." in text


def test_label_efficiency_does_not_judge_the_ordering_on_strategies_not_run(tmp_path):
    folder = tmp_path / "cells"
    efficiency = cells(experiments(quick=True)["label_efficiency"], dataset="digits", quick=True)
    write_record(folder, _record(next(c for c in efficiency if c.strategy == "bald"), [0.5, 0.85, 0.92, 0.96],
                                 [1.0] * 4))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "To 90%: BALD 40 (papers 145) — BatchBALD and Random not recorded yet, so the papers' ordering " \
           "cannot be judged here." in text
    assert "does **not** hold" not in text and ">50 (papers" not in text


def test_labels_to_reach():
    frame = pd.DataFrame({"strategy": ["a"] * 3 + ["b"] * 3, "seed": [0] * 6, "n_labelled": [10, 20, 30] * 2,
                          "accuracy": [0.5, 0.91, 0.95, 0.1, 0.2, 0.3]})
    reach = labels_to_reach(frame, 0.9)
    assert reach[("a", 0)] == 20 and np.isnan(reach[("b", 0)])


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study cell records"):
        write_report(tmp_path, tmp_path / "r.md")
    assert records_frame([]).empty


def test_a_users_data_gets_a_recommendation(tmp_path):
    folder = tmp_path / "cells"
    scale = experiments(quick=True)
    for name in ("baseline", "query_size", "pool_size"):
        for c in cells(scale[name], dataset="/data/my-workspace", quick=True):
            better = c.strategy == "entropy" or (name == "query_size" and c.condition == "Q=15")
            pool = {"pool=10%": 0.5, "pool=25%": 0.795, "pool=50%": 0.8, "pool=100%": 0.8}.get(c.condition, 0.8)
            write_record(folder, _record(c, [0.5, 0.6, 0.7, pool], [1.5, 1.2, 1.0, 0.5 if better else 0.52],
                                         seconds_score={"pool=10%": 0.1, "pool=25%": 0.25}.get(c.condition, 1.0)))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "## What to use on this data" in text
    assert "- **Strategy: Entropy** — the lowest test NLL at 50 labels in the baseline (Entropy 0.500" in text
    assert "- **Query size: 30**" in text  # all within 5 % of the best: the largest is chosen
    assert "- **pool_subsample: 25% of the pool**" in text
    assert "rerun without `--quick`" in text


def test_label_efficiency_states_where_the_mnist_protocol_departs_from_the_papers(tmp_path):
    """Only an MNIST study is compared with the papers' protocol, from its own settings."""
    from al_lib.study_report import _protocol_against_papers

    text = _protocol_against_papers(experiments()["label_efficiency"].settings)
    assert text == ("Our protocol, to read the differences by: a pool of 20 000 images (2 000 of it scored per round) "
                    "where the papers draw from MNIST's 60 000 training images; 20 initial labels drawn at random "
                    "where the papers start from a class-balanced set; each round 20 epochs from scratch, no "
                    "validation set.")
    folder = tmp_path / "cells"
    for dataset in ("digits", "mnist"):
        for c in cells(experiments(quick=True)["label_efficiency"], dataset=dataset, quick=True):
            write_record(folder / dataset, _record(c, [0.5, 0.91, 0.96, 0.97], [1.0] * 4))
    assert "Our protocol" not in write_report(folder / "digits", tmp_path / "d.md").read_text()
    assert "initial labels drawn at random where the papers start from a class-balanced set; each round 20 " \
           "epochs from scratch, early stopping on a validation split." in \
           write_report(folder / "mnist", tmp_path / "m.md").read_text()


def test_label_efficiency_compares_every_strategy_with_its_paper_figure():
    from al_lib.study_report import REFERENCE_LABELS, _against_papers

    bald, var = REFERENCE_LABELS["bald"], REFERENCE_LABELS["variation_ratio"]
    medians = {("bald", 0.90): bald[0] - 5, ("bald", 0.95): bald[1] + 30,
               ("variation_ratio", 0.90): var[0] + 40, ("variation_ratio", 0.95): np.inf}
    text = _against_papers(medians, ["bald", "variation_ratio"], 500)
    assert "BALD -5 / +30" in text and f"not reached in 500 (papers {var[1]})" in text
    assert "match or beat them in 1 of 4" in text
    assert "furthest behind: Var-ratio to 95% and Var-ratio to 90% (40 more)" in text


def test_findings_wait_for_both_arms(tmp_path):
    """A partial study (BALD alone under noise, convergence and imbalance) states no finding on a NaN."""
    folder = tmp_path / "cells"
    chosen = experiments(quick=True)
    for name in ("baseline", "noise", "convergence", "imbalance", "query_size"):
        for c in cells(chosen[name], dataset="digits", quick=True):
            if c.strategy == "bald" and c.condition in ("standard", "lambda=0.1", "under-trained", "delta=3", "Q=10"):
                write_record(folder, _record(c, [0.5, 0.6, 0.7, 0.8], [1.0] * 4,
                                             minority=0.5 if name == "imbalance" else None))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "nan" not in text.lower()
    assert text.count("no condition has both BALD and Random recorded") == 4
    for name in ("noise", "convergence"):  # one condition with both arms: still nothing to compare
        for c in cells(chosen[name], dataset="digits", quick=True):
            if c.strategy == "random" and c.condition in ("lambda=0.1", "under-trained"):
                write_record(folder, _record(c, [0.5, 0.6, 0.7, 0.8], [1.5] * 4))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "Not yet: BALD and Random are both recorded only at lambda=0.1 (NLL gap +0.500); the seed's " \
           "comparison needs at least two noise levels." in text
    assert "only at under-trained (NLL gap +0.500)" in text and "training regimes" in text
    assert "Regimes, each retrained from scratch every round: under-trained, 2 epochs; converged, 20 epochs " \
           "with early stopping; over-trained, 40 epochs." in text
    assert "BALD is recorded at fewer than two query sizes" in text


@pytest.mark.parametrize("over_nll, says", [(0.5, True), (1.5, False)])
def test_convergence_says_when_longer_training_lowered_both_arms_nll(tmp_path, over_nll, says):
    """Over-trained below converged for BALD and Random: the protocol had not converged in NLL."""
    folder = tmp_path / "cells"
    nll = {("converged", "bald"): 1.0, ("converged", "random"): 2.0, ("under-trained", "bald"): 2.5,
           ("under-trained", "random"): 2.2, ("over-trained", "bald"): over_nll, ("over-trained", "random"): 1.8}
    for c in cells(experiments(quick=True)["convergence"], dataset="digits", quick=True):
        write_record(folder, _record(c, [0.5, 0.6, 0.7, 0.8], [nll[c.condition, c.strategy]] * 4))
    text = write_report(folder, tmp_path / "r.md").read_text()
    sentence = ("Training longer lowered both arms' test NLL at 50 labels (BALD 1.000 → 0.500, Random 2.000 → "
                "1.800): the converged protocol is not yet converged in NLL there")
    assert (sentence in text) is says and "Active gain at 50 labels: under-trained -0.300, converged +1.000, over" in text
    # the experiment's order of conditions, not the record files' (alphabetical)
    assert text.index("| under-trained | BALD") < text.index("| converged | BALD") < text.index("| over-trained | BALD")


def test_pool_size_compares_with_the_largest_fraction_recorded(tmp_path):
    """Before the 100 % cell is recorded the finding does not call 25 % "all of it"."""
    folder = tmp_path / "cells"
    for c in cells(experiments(quick=True)["pool_size"], dataset="digits", quick=True):
        if c.condition in ("pool=10%", "pool=25%"):
            write_record(folder, _record(c, [0.5, 0.6, 0.7, 0.8], [1.0] * 4,
                                         seconds_score=0.1 if c.condition == "pool=10%" else 0.25))
    text = write_report(folder, tmp_path / "r.md").read_text()
    assert "against scoring 25 % of it, the most recorded yet, (0.800 vs 0.800)" in text
    assert "all of it" not in text
