"""Acquisition heuristics as pure functions of MC probabilities ``[N, C, ..., T]``.

Per-sample scorers (higher = more worth labelling): ``bald``, ``entropy``, ``margin``,
``least_confidence``, ``variation_ratio``, ``mean_std``, ``random``; ``HEURISTICS`` maps their
names to them; ``predictive_distribution`` is the MC-averaged prediction ``[N, C]``. Selection: ``top_k``; stochastic batch acquisition ``power_sampling``,
``softmax_sampling``, ``softrank_sampling`` and the composed ``power_bald``, ``power_entropy``,
``softmax_bald``, ``softrank_bald``; ``batch_bald``, ``joint_mutual_information`` (exact) and
``estimate_joint_mutual_information`` (Monte Carlo, for large batches). Embedding-based batch
selection (:mod:`al_lib.heuristics.diversity`): ``badge``, ``kcenter_greedy``, ``typiclust``,
``probcover``, ``class_balanced``; ``epig`` (:mod:`al_lib.heuristics.epig`) against a target set.
Numpy in -> numpy out, torch in -> torch out (same device).
"""

from al_lib.heuristics.batch_bald import (
    batch_bald,
    estimate_joint_mutual_information,
    joint_mutual_information,
)
from al_lib.heuristics.diversity import badge, class_balanced, kcenter_greedy, probcover, typiclust
from al_lib.heuristics.epig import epig
from al_lib.heuristics.scores import (
    bald,
    entropy,
    least_confidence,
    margin,
    mean_std,
    predictive_distribution,
    random,
    variation_ratio,
)
from al_lib.heuristics.selection import (
    power_bald,
    power_entropy,
    power_sampling,
    softmax_bald,
    softmax_sampling,
    softrank_bald,
    softrank_sampling,
    top_k,
)

HEURISTICS = {
    f.__name__: f
    for f in (bald, entropy, margin, least_confidence, variation_ratio, mean_std, random)
}

__all__ = [
    "HEURISTICS",
    "badge",
    "bald",
    "batch_bald",
    "class_balanced",
    "entropy",
    "epig",
    "estimate_joint_mutual_information",
    "joint_mutual_information",
    "kcenter_greedy",
    "least_confidence",
    "margin",
    "mean_std",
    "power_bald",
    "power_entropy",
    "power_sampling",
    "predictive_distribution",
    "probcover",
    "random",
    "softmax_bald",
    "softmax_sampling",
    "softrank_bald",
    "softrank_sampling",
    "top_k",
    "typiclust",
    "variation_ratio",
]
