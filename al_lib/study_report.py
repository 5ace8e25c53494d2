"""The study's report: tables (mean ± std over seeds), PNG plots and one sentence per finding.

:func:`write_report` reads the cell records of :mod:`al_lib.study` (one JSON per cell) and writes
a Markdown file and its figures. Each finding is compared with the seed (the BaaL paper,
Atighehchian et al. 2020) and, for label efficiency, with the numbers of Gal et al. (2017) and
the BatchBALD paper (Kirsch et al. 2019). Incomplete or quick-only cell sets are said so plainly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from al_lib.study import EXPERIMENTS, cells, experiments, progress, read_records, thousands

__all__ = ["records_frame", "labels_to_reach", "write_report", "REFERENCE_LABELS"]

#: Labels needed to reach 90 % / 95 % MNIST test accuracy in the papers (B=20 initial, Q=10).
#: Gal et al. 2017 (labels to 10 % / 5 % error) and the BatchBALD paper (batch 10).
REFERENCE_LABELS = {
    "bald": (145, 335, "Gal et al. 2017"), "variation_ratio": (120, 295, "Gal et al. 2017"),
    "entropy": (165, 355, "Gal et al. 2017"), "random": (255, 835, "Gal et al. 2017"),
    "batch_bald": (105, 225, "BatchBALD paper, batch 10"),
}
_NAMES = {"bald": "BALD", "batch_bald": "BatchBALD", "entropy": "Entropy", "variation_ratio": "Var-ratio",
          "random": "Random"}


def records_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per (cell, round): experiment, condition, strategy, seed, quick, dataset, the
    round's metrics (round, n_labelled, accuracy, nll, minority_f1, seconds_score, n_scored, ...)."""
    rows = []
    for record in records:
        c = record["config"]
        for r in record["rows"]:
            rows.append({"experiment": c["experiment"], "condition": c["condition"], "strategy": c["strategy"],
                         "seed": c["seed"], "quick": c["quick"], "dataset": c["dataset"], **r})
    return pd.DataFrame(rows)


def labels_to_reach(frame: pd.DataFrame, threshold: float) -> pd.Series:
    """Per (strategy, seed): the first n_labelled whose accuracy ≥ ``threshold``; NaN when never."""
    def first(group: pd.DataFrame) -> float:
        hit = group.sort_values("n_labelled")
        hit = hit[hit["accuracy"] >= threshold]
        return float(hit["n_labelled"].iloc[0]) if len(hit) else np.nan

    return frame.groupby(["strategy", "seed"])[["n_labelled", "accuracy"]].apply(first)


def _pm(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if not len(values):
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _at_budget(frame: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Rows at the last round with n_labelled ≤ budget of each cell (the budget's curve point)."""
    keep = frame[frame["n_labelled"] <= budget]
    keys = ["condition", "strategy", "seed"]
    return keep.sort_values("n_labelled").groupby(keys, as_index=False).tail(1)


def _table(frame: pd.DataFrame, budgets: Sequence[int], metric: str, digits: int = 3) -> list[str]:
    head = "| condition | strategy | " + " | ".join(f"{metric} @ {b}" for b in budgets) + " |"
    lines = [head, "|" + "---|" * (2 + len(budgets))]
    for (condition, strategy), _ in frame.groupby(["condition", "strategy"], sort=False):
        cells_ = []
        for b in budgets:
            at = _at_budget(frame, b)
            at = at[(at["condition"] == condition) & (at["strategy"] == strategy)]
            cells_.append(_pm(at[metric], digits))
        lines.append(f"| {condition} | {_NAMES.get(strategy, strategy)} | " + " | ".join(cells_) + " |")
    return lines


def _mean_at(frame: pd.DataFrame, budget: int, metric: str, **where) -> float:
    at = _at_budget(frame, budget)
    for k, v in where.items():
        at = at[at[k] == v]
    return float(at[metric].mean()) if len(at) else float("nan")


# ---------------------------------------------------------------------- figures


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    import io

    from al_lib.atomic import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


def plot_active_gain(frame: pd.DataFrame, path: Path, *, title: str) -> None:
    """Active gain NLL(Random) − NLL(BALD) vs labels, one line per condition, ±1 std over seeds."""
    fig = _figure()
    ax = fig.add_subplot()
    for condition, group in frame.groupby("condition", sort=False):
        wide = group.pivot_table(index=["seed", "n_labelled"], columns="strategy", values="nll")
        if not {"bald", "random"} <= set(wide.columns):
            continue
        gain = (wide["random"] - wide["bald"]).rename("gain").reset_index()
        stats = gain.groupby("n_labelled")["gain"].agg(["mean", "std"]).reset_index()
        (line,) = ax.plot(stats["n_labelled"], stats["mean"], marker="o", label=condition)
        ax.fill_between(stats["n_labelled"], stats["mean"] - stats["std"].fillna(0),
                        stats["mean"] + stats["std"].fillna(0), alpha=0.2, color=line.get_color())
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    ax.set_xlabel("labels")
    ax.set_ylabel("active gain: NLL(Random) − NLL(BALD)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_speedup(frame: pd.DataFrame, path: Path, *, budget: int, title: str) -> None:
    """Speed-up of scoring (time at the largest fraction recorded, 100 % in a whole study / time at
    fraction) and accuracy at ``budget`` vs the fraction of the pool scored."""
    stats = _pool_stats(frame, budget)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(stats["fraction"] * 100, stats["speedup"], marker="o", color="C0", label="scoring speed-up")
    largest = float(stats["fraction"].max())  # the reference: 100 % once it is recorded
    ax.plot(stats["fraction"] * 100, largest / stats["fraction"], linestyle=":", color="C0",
            label=f"ideal: {largest * 100:.0f} % / fraction")
    ax.legend(loc="upper center")
    ax.set_xlabel("% of the pool scored per round")
    ax.set_ylabel(f"speed-up of scoring (× vs {largest * 100:.0f} %)", color="C0")
    twin = ax.twinx()
    twin.errorbar(stats["fraction"] * 100, stats["acc_mean"], yerr=stats["acc_std"].fillna(0), marker="s",
                  color="C1", label=f"accuracy at {budget} labels")
    twin.set_ylabel(f"test accuracy at {budget} labels", color="C1")
    twin.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _pool_stats(frame: pd.DataFrame, budget: int) -> pd.DataFrame:
    """Per pool fraction: mean scoring seconds per round, speed-up vs the largest fraction recorded
    (100 % in a whole study), accuracy at budget."""
    fractions = frame["condition"].str.extract(r"(\d+)%")[0].astype(float) / 100
    frame = frame.assign(fraction=fractions)
    scoring = frame[frame["seconds_score"] > 0].groupby("fraction")["seconds_score"].mean()
    at = _at_budget(frame, budget).assign(fraction=lambda f: f["condition"].str.extract(r"(\d+)%")[0]
                                          .astype(float) / 100)
    acc = at.groupby("fraction")["accuracy"].agg(["mean", "std"])
    stats = pd.DataFrame({"seconds": scoring, "acc_mean": acc["mean"], "acc_std": acc["std"]}).reset_index()
    full = stats.loc[stats["fraction"].idxmax(), "seconds"]
    return stats.assign(speedup=full / stats["seconds"]).sort_values("fraction")


def _curves(frame: pd.DataFrame, y: str, path: Path, title: str) -> None:
    from al_lib.plotting import plot_learning_curves

    curves = {_NAMES.get(s, s): g for s, g in frame.groupby("strategy", sort=False)}
    plot_learning_curves(curves, x="n_labelled", y=y, path=path, title=title,
                         reference="Random" if "Random" in curves else None)


# ---------------------------------------------------------------------- the report


def write_report(cells_dir: str | os.PathLike, path: str | os.PathLike, *, title: str | None = None,
                 timing_note: str | None = None) -> Path:
    """Write the Markdown report of the records in ``cells_dir`` to ``path``, figures to
    ``<path without suffix>/``; returns ``path``.

    Raises
    ------
    FileNotFoundError
        ``cells_dir`` holds no record.
    """
    from al_lib.atomic import atomic_write_text

    records = read_records(cells_dir)
    if not records:
        raise FileNotFoundError(f"{cells_dir}: no study cell records (run `al study` first)")
    frame = records_frame(records)
    path = Path(path)
    figures = path.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    quick = bool(frame["quick"].all())
    datasets = sorted(frame["dataset"].unique())
    seeds_found = sorted(frame["seed"].unique())
    lines = [f"# {title or 'The systematic study, reproduced'}", "",
             f"Generated by `al study report` from {len(records)} cell records in `{cells_dir}` "
             f"(dataset: {', '.join(datasets)}; seeds: {', '.join(map(str, seeds_found))}).", ""]
    if quick:
        lines += ["**Quick run only** (1 seed, tiny budgets): these numbers check the machinery and say "
                  "nothing reliable about active learning; every comparison below is marked as such.", ""]
    default_seeds = len(next(iter(experiments(quick=quick).values())).seeds)
    scale = experiments(quick=quick, seeds=max(default_seeds, len(seeds_found)))
    everything = [c for e in scale.values() for c in cells(e, dataset=datasets[0], quick=quick)]
    lines += ["Progress: " + progress(cells_dir, everything).describe(partial=False), ""]
    if timing_note:
        lines += [timing_note, ""]
    devices = sorted({r["device"] for r in records})
    total = sum(r["seconds"] for r in records if not r.get("reused_from"))
    lines += [f"Compute: {total:.0f} s of cell time in all, on {', '.join(devices)}.", ""]
    recommendations: dict = {}
    for name in EXPERIMENTS:
        experiment = scale[name]
        part = _in_design_order(frame[frame["experiment"] == name], experiment)
        expected = len(cells(experiment, dataset=datasets[0], quick=quick))
        found = sum(r["config"]["experiment"] == name for r in records)
        lines += [f"## {name.replace('_', ' ').capitalize()}", "", experiment.title + ".", ""]
        if not len(part):
            lines += [f"Not run yet (0 of {expected} cells).", ""]
            continue
        status = (f"{found} of {expected} cells recorded" + ("" if found >= expected else
                  " — **incomplete**: the numbers below cover only the recorded cells"))
        lines += [status + ".", ""]
        lines += SECTIONS[name](part, experiment, figures, path.parent, quick, recommendations)
        lines.append("")
    if not set(datasets) <= {"mnist", "digits"}:
        lines += ["## What to use on this data", ""] + _recommend(recommendations, quick) + [""]
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _in_design_order(part: pd.DataFrame, experiment) -> pd.DataFrame:
    """``part``'s rows with the conditions and strategies in the experiment's order (Q=10, 20,
    50, 100 rather than the files' Q=10, Q=100, ...), each cell's rounds kept in order."""
    conditions = {c: i for i, c in enumerate(experiment.conditions)}
    strategies = {s: i for i, s in enumerate(experiment.strategies)}
    order = pd.DataFrame({"c": part["condition"].map(conditions).fillna(len(conditions)),
                          "s": part["strategy"].map(strategies).fillna(len(strategies))}, index=part.index)
    return part.loc[order.sort_values(["c", "s"], kind="stable").index]


def _img(png: Path, base: Path, alt: str) -> str:
    return f"![{alt}]({os.path.relpath(png, base).replace(os.sep, '/')})"


def _caveat(quick: bool, part: pd.DataFrame) -> str:
    if quick:
        return " (quick run: not evidence either way)"
    n = part["seed"].nunique()
    return "" if n >= 3 else f" (only {n} seed{'s' if n > 1 else ''}: weak evidence)"


def _verdict(agree: bool) -> str:
    return "agrees with the seed" if agree else "does **not** agree with the seed"


#: The finding of an experiment whose recorded cells hold no condition with both BALD and Random.
_NOT_BOTH = ("**Finding.** Not yet: no condition has both BALD and Random recorded, so the seed's comparison "
             "cannot be made.")


def _one_condition(pairs: list, what: str) -> str:
    """The finding of an experiment with BALD and Random recorded under fewer than two conditions."""
    if not pairs:
        return _NOT_BOTH
    return (f"**Finding.** Not yet: BALD and Random are both recorded only at {pairs[0][0]} "
            f"(NLL gap {pairs[0][1]:+.3f}); the seed's comparison needs at least two {what}.")


def _baseline(part, experiment, figures, base, quick, rec) -> list[str]:
    budgets = experiment.budgets
    acc_png, nll_png = figures / "baseline_accuracy.png", figures / "baseline_nll.png"
    _curves(part, "accuracy", acc_png, "Baseline: test accuracy (mean ± std over seeds)")
    _curves(part, "nll", nll_png, "Baseline: test NLL (mean ± std over seeds)")
    b = budgets[-1]
    bald, rand = _mean_at(part, b, "nll", strategy="bald"), _mean_at(part, b, "nll", strategy="random")
    by_strategy = {s: _mean_at(part, b, "nll", strategy=s) for s in part["strategy"].unique()}
    rec["strategy"] = min(by_strategy, key=by_strategy.get)
    rec["strategy_nll"] = by_strategy
    rec["budget"] = b
    sentence = (f"At {b} labels BALD's test NLL is {bald:.3f} against Random's {rand:.3f} "
                f"({rand - bald:+.3f}): this {_verdict(bald < rand)} (BALD below Random once the model is "
                f"trained to convergence, seed Fig. 1){_caveat(quick, part)}.")
    if np.isnan(bald) or np.isnan(rand):
        sentence = _NOT_BOTH.removeprefix("**Finding.** ")
    return (_table(part, budgets, "accuracy") + [""] + _table(part, budgets, "nll") +
            ["", _img(acc_png, base, "baseline accuracy"), "", _img(nll_png, base, "baseline NLL"), "",
             "**Finding.** " + sentence])


def _noise(part, experiment, figures, base, quick, rec) -> list[str]:
    budgets = experiment.budgets
    b = budgets[-1]
    gaps = []
    for condition in part["condition"].unique():
        gaps.append((condition, _mean_at(part, b, "nll", condition=condition, strategy="random")
                     - _mean_at(part, b, "nll", condition=condition, strategy="bald")))
    gaps = [(c, g) for c, g in gaps if not np.isnan(g)]
    if len(gaps) < 2:
        return _table(part, budgets, "nll") + ["", _one_condition(gaps, "noise levels")]
    worst = gaps[-1]
    sentence = (f"At {b} labels BALD's NLL advantage over Random is "
                + ", ".join(f"{g:+.3f} at {c}" for c, g in gaps)
                + ": the seed finds BALD keeps its advantage under label noise; here it "
                + ("does" if worst[1] > 0 else "does **not**") + f" at the highest noise recorded, {worst[0]}"
                + f"{_caveat(quick, part)}.")
    return _table(part, budgets, "nll") + ["", "**Finding.** " + sentence]


def _convergence(part, experiment, figures, base, quick, rec) -> list[str]:
    budgets = experiment.budgets
    png = figures / "convergence_active_gain.png"
    plot_active_gain(part, png, title="Active gain by training regime (mean ± std over seeds)")
    b = budgets[-1]
    gain = {c: _mean_at(part, b, "nll", condition=c, strategy="random") - _mean_at(part, b, "nll", condition=c,
                                                                                     strategy="bald")
            for c in part["condition"].unique()}
    gain = {c: g for c, g in gain.items() if not np.isnan(g)}
    head = [_regimes(experiment), ""]
    if len(gain) < 2:
        return head + (_table(part, budgets, "nll") + ["", _img(png, base, "active gain"), "",
                                                       _one_condition(list(gain.items()), "training regimes")])
    converged = gain.get("converged", float("nan"))
    agree = converged > 0 and all(converged >= g for c, g in gain.items() if c != "converged")
    sentence = (f"Active gain at {b} labels: " + ", ".join(f"{c} {g:+.3f}" for c, g in gain.items())
                + ". The seed finds the gain largest (and positive) for the converged model: this "
                + _verdict(agree) + _caveat(quick, part) + "." + _longer_training(part, b))
    return head + _table(part, budgets, "nll") + ["", _img(png, base, "active gain"), "", "**Finding.** " + sentence]


def _longer_training(part, b: int) -> str:
    """A sentence when the over-trained regime has the lower test NLL for both arms at ``b``
    labels: then the converged protocol had not converged in NLL, and the regime is only longer."""
    nll = {(c, s): _mean_at(part, b, "nll", condition=c, strategy=s)
           for c in ("converged", "over-trained") for s in ("bald", "random")}
    if any(np.isnan(v) for v in nll.values()) or not all(nll["over-trained", s] < nll["converged", s]
                                                          for s in ("bald", "random")):
        return ""
    return (" Training longer lowered both arms' test NLL at {b} labels (BALD {cb:.3f} → {ob:.3f}, Random "
            "{cr:.3f} → {orr:.3f}): the converged protocol is not yet converged in NLL there, so the "
            "over-trained regime is longer training rather than over-fitting.").format(
        b=b, cb=nll["converged", "bald"], ob=nll["over-trained", "bald"], cr=nll["converged", "random"],
        orr=nll["over-trained", "random"])


def _regimes(experiment) -> str:
    """How each training regime of the convergence experiment trains, from its settings."""
    fits = {c: o.get("fit_kwargs", experiment.settings["fit_kwargs"]) for c, o in experiment.conditions.items()}

    def words(fit: dict) -> str:
        length = fit.get("min_samples_per_epoch") or 0
        stop = " with early stopping" if fit.get("val_fraction") and fit.get("patience") else ""
        size = f" of at least {thousands(length)} samples" if length else ""
        return f"{fit['max_epochs']} epochs{size}{stop}"

    return ("Regimes, each retrained from scratch every round: "
            + "; ".join(f"{c}, {words(f)}" for c, f in fits.items()) + ".")


def _query_size(part, experiment, figures, base, quick, rec) -> list[str]:
    budgets = experiment.budgets
    b = budgets[-1]
    nll = {c: _mean_at(part, b, "nll", condition=c, strategy="bald") for c in part["condition"].unique()}
    nll = {c: v for c, v in nll.items() if not np.isnan(v)}
    if len(nll) < 2:
        return _table(part, budgets, "nll") + ["", "**Finding.** Not yet: BALD is recorded at fewer than two query "
                                                   "sizes, so nothing can be compared."]
    spread = max(nll.values()) - min(nll.values())
    small = min(nll.values())
    ok = [c for c, v in nll.items() if v <= small * 1.05]
    rec["query_size"] = max(ok, key=lambda c: int(c.split("=")[1])) if ok else None
    sentence = (f"BALD's NLL at {b} labels across query sizes: " + ", ".join(f"{c} {v:.3f}" for c, v in nll.items())
                + f" (spread {spread:.3f}). The seed finds a moderate query size costs little; here the spread is "
                + ("small (≤ 5 % of the NLL), which agrees" if spread <= 0.05 * small else
                   "larger than 5 %, which does **not** agree") + _caveat(quick, part) + ".")
    return _table(part, budgets, "nll") + ["", "**Finding.** " + sentence]


def _pool_size(part, experiment, figures, base, quick, rec) -> list[str]:
    budgets = experiment.budgets
    b = budgets[-1]
    png = figures / "pool_size_speedup.png"
    plot_speedup(part, png, budget=b, title="Scoring a fraction of the pool (BALD)")
    stats = _pool_stats(part, b)
    full_acc = float(stats.loc[stats["fraction"].idxmax(), "acc_mean"])
    near = stats[stats["acc_mean"] >= full_acc - 0.01]
    best = near.iloc[0] if len(near) else stats.iloc[-1]
    rec["pool_fraction"] = float(best["fraction"])
    lines = ["| pool scored | scoring s / round | speed-up | accuracy @ %d |" % b, "|---|---|---|---|"]
    lines += [f"| {f * 100:.0f} % | {s:.2f} | {u:.1f}× | {a:.3f}" + (f" ± {sd:.3f}" if sd == sd else "") + " |"
              for f, s, u, a, sd in stats[["fraction", "seconds", "speedup", "acc_mean", "acc_std"]].itertuples(
                  index=False)]
    largest = float(stats["fraction"].max())
    against = "scoring all of it" if largest >= 1.0 else f"scoring {largest * 100:.0f} % of it, the most recorded yet,"
    sentence = (f"Scoring {best['fraction'] * 100:.0f} % of the pool loses at most 0.01 accuracy against {against} "
                f"({best['acc_mean']:.3f} vs {full_acc:.3f}) at a {best['speedup']:.1f}× faster scoring step; the seed "
                "finds a random subset of the pool loses little accuracy for a large speed-up: this "
                + _verdict(best["fraction"] < 1.0) + _caveat(quick, part) + ".")
    return lines + ["", _img(png, base, "pool-size speed-up"), "", "**Finding.** " + sentence]


def _imbalance(part, experiment, figures, base, quick, rec) -> list[str]:
    budgets = experiment.budgets
    b = budgets[-1]
    reduced = part[part["minority_f1"].notna()]
    lines = _table(part, budgets, "nll")
    if not len(reduced):
        return lines + ["", "No condition with reduced classes was recorded."]
    png = figures / "imbalance_minority_f1.png"
    worst = reduced["condition"].iloc[-1]
    _curves(reduced[reduced["condition"] == worst], "minority_f1", png, f"F1 of the reduced classes ({worst})")
    bald = _mean_at(reduced, b, "minority_f1", condition=worst, strategy="bald")
    rand = _mean_at(reduced, b, "minority_f1", condition=worst, strategy="random")
    if np.isnan(bald) or np.isnan(rand):
        return lines + ["", _NOT_BOTH]
    sentence = (f"With {worst} reduced classes, the F1 of the reduced classes at {b} labels is {bald:.3f} for BALD "
                f"and {rand:.3f} for Random ({bald - rand:+.3f}); the seed finds BALD helps the rare classes more "
                "than Random does: this " + _verdict(bald > rand) + _caveat(quick, part) + ".")
    return (lines + ["", "F1 of the reduced classes:", ""] + _table(reduced, budgets, "minority_f1")
            + ["", _img(png, base, "minority F1"), "", "**Finding.** " + sentence])


def _label_efficiency(part, experiment, figures, base, quick, rec) -> list[str]:
    png = figures / "label_efficiency_accuracy.png"
    _curves(part, "accuracy", png, "Label efficiency: test accuracy (B=20, Q=10)")
    max_labels = int(part["n_labelled"].max())
    lines = ["| strategy | labels to 90 % (median [q1, q3]) | labels to 95 % | papers (90 % / 95 %) |",
             "|---|---|---|---|"]
    medians, spreads = {}, {}
    for strategy in part["strategy"].unique():
        row = [_NAMES.get(strategy, strategy)]
        for threshold in (0.90, 0.95):
            reach = labels_to_reach(part[part["strategy"] == strategy], threshold)
            if reach.notna().sum() * 2 <= len(reach):  # median not reached
                row.append(f"> {max_labels} ({reach.notna().sum()} of {len(reach)} seeds reached it)")
                medians[(strategy, threshold)] = np.inf
            else:
                filled = reach.fillna(np.inf)
                q1, med, q3 = np.quantile(filled, [0.25, 0.5, 0.75])
                medians[(strategy, threshold)] = med
                spreads[(strategy, threshold)] = (q1, q3)
                row.append(f"{med:.0f} [{q1:.0f}, {q3:.0f}]".replace("inf", f">{max_labels}"))
        ref = REFERENCE_LABELS.get(strategy)
        row.append(f"{ref[0]} / {ref[1]} ({ref[2]})" if ref else "–")
        lines.append("| " + " | ".join(row) + " |")
    sentences = []
    compared = ("batch_bald", "bald", "random")
    recorded = set(part["strategy"])
    missing = [_NAMES[s] for s in compared if s not in recorded]
    for threshold in (0.90, 0.95):
        ours = {s: medians.get((s, threshold), np.inf) for s in compared if s in recorded}
        ordering = not missing and ours["batch_bald"] <= ours["bald"] < ours["random"]
        ref = {s: REFERENCE_LABELS[s][0 if threshold == 0.90 else 1] for s in ours}
        text = ", ".join(f"{_NAMES[s]} {'>' + str(max_labels) if np.isinf(v) else f'{v:.0f}'}"
                         f" (papers {ref[s]})" for s, v in ours.items())
        if missing:  # a strategy not run is no evidence of "never reached"
            verdict = (f"{' and '.join(missing)} not recorded yet, so the papers' ordering cannot be judged "
                       "here.")
        elif all(np.isinf(v) for v in ours.values()):
            verdict = f"none reached it within {max_labels} labels, so the papers' ordering cannot be judged here."
        else:
            verdict = "the papers' ordering BatchBALD ≤ BALD < Random " + ("holds" if ordering else
                                                                          "does **not** hold") + " here"
            verdict += "." if ordering else _why_not(ours, spreads, threshold)
        sentences.append(f"To {threshold:.0%}: {text} — {verdict}")
    sentences.append(_against_papers(medians, [s for s in part["strategy"].unique() if s in REFERENCE_LABELS],
                                     max_labels))
    if set(part["dataset"]) == {"mnist"}:
        sentences.append(_protocol_against_papers(experiment.settings))
    caveat = _caveat(quick, part).strip(" ()")
    return lines + ["", _img(png, base, "label efficiency"), "",
                    "**Finding.** " + " ".join(sentences) + (f" ({caveat}.)" if caveat else "")]


def _protocol_against_papers(settings: dict) -> str:
    """Where the cells' protocol (``settings`` of the label-efficiency experiment) departs from
    the papers' MNIST runs, as a sentence to read their differences by."""
    fit = settings["fit_kwargs"]
    pool = (f"a pool of {thousands(settings['pool_limit'])} images" if settings.get("pool_limit")
            else "the whole pool")
    scored = (f"{thousands(settings['pool_subsample'])} of it scored per round"
              if settings.get("pool_subsample") else "all of it scored per round")
    stop = "early stopping on a validation split" if fit.get("val_fraction") else "no validation set"
    return (f"Our protocol, to read the differences by: {pool} ({scored}) where the papers draw from MNIST's "
            f"60 000 training images; {settings['initial_labels']} initial labels drawn at random where the "
            f"papers start from a class-balanced set; each round {fit['max_epochs']} epochs from scratch, {stop}.")


def _why_not(ours: dict, spreads: dict, threshold: float) -> str:
    """The end of the sentence saying the ordering fails: each pair out of order, and whether the
    gap lies within the spread over seeds (interquartile ranges overlapping: more seeds decide)."""
    pairs = [("batch_bald", "bald", lambda a, b: a <= b), ("bald", "random", lambda a, b: a < b)]
    reasons = []
    for first, second, in_order in pairs:
        a, b = ours[first], ours[second]
        if in_order(a, b):
            continue
        if np.isinf(a):
            reasons.append(f"{_NAMES[first]} did not reach it in most seeds, {_NAMES[second]} did")
            continue
        ra, rb = spreads[(first, threshold)], spreads[(second, threshold)]
        within = ra[0] <= rb[1] and rb[0] <= ra[1]
        reasons.append(f"{_NAMES[first]} needs {a - b:+.0f} labels against {_NAMES[second]}, "
                       + ("within the spread over seeds (their quartile ranges overlap): more seeds decide"
                          if within else "outside the spread over seeds"))
    return ": " + "; ".join(reasons) + "." if reasons else "."


def _against_papers(medians: dict, strategies: list, max_labels: int) -> str:
    """One sentence: each strategy's median labels to 90 % / 95 % minus the papers' figure, and
    where we are furthest behind (the issue's goal is to match or beat every one of them)."""
    parts, behind, matched, total = [], [], 0, 0
    for strategy in strategies:
        diffs = []
        for i, threshold in enumerate((0.90, 0.95)):
            ours, paper = medians[(strategy, threshold)], REFERENCE_LABELS[strategy][i]
            total += 1
            if np.isinf(ours):
                diffs.append(f"not reached in {max_labels} (papers {paper})")
                behind.append((np.inf, f"{_NAMES[strategy]} to {threshold:.0%}"))
                continue
            diffs.append(f"{ours - paper:+.0f}")
            if ours <= paper:
                matched += 1
            else:
                behind.append((ours - paper, f"{_NAMES[strategy]} to {threshold:.0%} ({ours - paper:.0f} more)"))
        parts.append(f"{_NAMES[strategy]} {' / '.join(diffs)}")
    if not parts:
        return ""
    text = ("Against the papers, median labels to 90 % / 95 % minus theirs (negative: fewer labels): "
            + ", ".join(parts) + f". We match or beat them in {matched} of {total}")
    if behind:
        worst = [what for _, what in sorted(behind, key=lambda b: -b[0])[:2]]
        text += "; furthest behind: " + " and ".join(worst)
    return text + "."


def _recommend(rec: dict, quick: bool) -> list[str]:
    lines = []
    if "strategy" in rec:
        nll = rec["strategy_nll"]
        lines.append(f"- **Strategy: {_NAMES.get(rec['strategy'], rec['strategy'])}** — the lowest test NLL at "
                     f"{rec['budget']} labels in the baseline (" +
                     ", ".join(f"{_NAMES.get(s, s)} {v:.3f}" for s, v in sorted(nll.items(), key=lambda kv: kv[1]))
                     + ").")
    if rec.get("query_size"):
        lines.append(f"- **Query size: {rec['query_size'].split('=')[1]}** — the largest query size whose NLL stays "
                     "within 5 % of the best: fewer rounds for the annotators at no loss.")
    if "pool_fraction" in rec:
        lines.append(f"- **pool_subsample: {rec['pool_fraction']:.0%} of the pool** — the smallest fraction that kept "
                     "accuracy within 0.01 of scoring the whole pool.")
    if not lines:
        lines.append("- Run the baseline, query_size and pool_size experiments to get a recommendation.")
    if quick:
        lines.append("- These come from a quick run (1 seed, tiny budgets): rerun without `--quick` before "
                     "relying on them.")
    return lines


SECTIONS = {"baseline": _baseline, "noise": _noise, "convergence": _convergence, "query_size": _query_size,
            "pool_size": _pool_size, "imbalance": _imbalance, "label_efficiency": _label_efficiency}
