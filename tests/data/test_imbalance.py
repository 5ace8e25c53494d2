"""make_imbalanced: minority classes keep a seeded random fraction, others keep everything."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Subset

from al_lib.data import ArrayDataset, make_imbalanced

TARGETS = np.repeat(np.arange(10), 40)  # 10 classes x 40 samples


def test_explicit_minority_classes_keep_a_quarter():
    idx = make_imbalanced(TARGETS, minority_classes=[2, 7], seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    counts = np.bincount(TARGETS[idx], minlength=10)
    assert counts.tolist() == [40, 40, 10, 40, 40, 40, 40, 10, 40, 40]


def test_random_delta_classes_are_seeded():
    a, classes_a = make_imbalanced(TARGETS, minority_classes=3, seed=5, return_classes=True)
    b, classes_b = make_imbalanced(TARGETS, minority_classes=3, seed=5, return_classes=True)
    assert np.array_equal(a, b) and np.array_equal(classes_a, classes_b)
    assert len(classes_a) == 3
    counts = np.bincount(TARGETS[a], minlength=10)
    assert sorted(np.flatnonzero(counts == 10).tolist()) == classes_a.tolist()
    others = [make_imbalanced(TARGETS, minority_classes=3, seed=s).tolist() for s in range(6, 10)]
    assert any(o != a.tolist() for o in others)


def test_fraction_rounding_and_extremes():
    targets = [0] * 10 + [1] * 3
    idx = make_imbalanced(targets, minority_classes=[0], fraction=0.25, seed=0)
    assert np.bincount(np.asarray(targets)[idx]).tolist() == [3, 3]  # 2.5 rounds half up
    assert len(make_imbalanced(targets, minority_classes=[0], fraction=0.0, seed=0)) == 3
    assert len(make_imbalanced(targets, minority_classes=[0, 1], fraction=1.0, seed=0)) == 13
    assert len(make_imbalanced(targets, minority_classes=0, seed=0)) == 13


def test_accepts_torch_targets_and_feeds_subset():
    data = ArrayDataset(torch.zeros(len(TARGETS), 2), TARGETS)
    idx = make_imbalanced(torch.as_tensor(TARGETS), minority_classes=[0], seed=1)
    subset = Subset(data, idx)
    assert len(subset) == 370 and subset[0][1] == TARGETS[idx[0]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(minority_classes=[11]), "do not occur"),
        (dict(minority_classes=11), "cannot pick 11"),
        (dict(minority_classes=[0], fraction=1.5), "fraction"),
        (dict(minority_classes=["a"]), "ints"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_imbalanced(TARGETS, seed=0, **kwargs)
    with pytest.raises(ValueError, match="1-D integer"):
        make_imbalanced(np.zeros(3), minority_classes=[0])


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=1, max_size=6),
    fraction=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_counts_property(counts, fraction, seed):
    targets = np.repeat(np.arange(len(counts)), counts)
    present = np.unique(targets)
    if not len(present):
        return
    minority = present[::2].tolist()
    idx = make_imbalanced(targets, minority_classes=minority, fraction=fraction, seed=seed)
    kept = np.bincount(targets[idx], minlength=len(counts))
    for c, n in enumerate(counts):
        expected = int(np.floor(fraction * n + 0.5)) if c in minority else n
        assert kept[c] == expected
    again = make_imbalanced(targets, minority_classes=minority, fraction=fraction, seed=seed)
    assert np.array_equal(idx, again)
