"""scikit-activeml's classifier interface over given probabilities: its strategies on our inputs.

Shared by the ``embedding_strategies`` benchmark group and ``tests/heuristics/test_against_skactiveml.py``
(scikit-activeml 1.0.1 is a test/benchmark-only dependency; importing this module needs it).
"""

from __future__ import annotations

import numpy as np
from skactiveml.base import SkactivemlClassifier


class GivenClassifier(SkactivemlClassifier):
    """``predict_proba`` returns the given ``probs [N, C]`` (and, with ``return_embeddings=True``,
    the input rows as the embeddings), so scikit-activeml's ``Badge`` sees exactly our inputs."""

    def __init__(self, probs=None, classes=None, missing_label=np.nan):
        super().__init__(classes=classes, missing_label=missing_label)
        self.probs = probs

    def fit(self, X, y, sample_weight=None):
        self._validate_data(X, y)
        return self

    def predict_proba(self, X, return_embeddings=False):
        return (self.probs, X) if return_embeddings else self.probs
