"""ActiveLearningDataset: id-keyed labelling, views, history, persistence."""

import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from al_lib.data import HISTORY_COLUMNS, ActiveLearningDataset, ArrayDataset

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
T0_ISO = "2024-05-01T12:00:00.000000Z"


def make_arrays(n=20, n_classes=3):
    x = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    y = np.arange(n) % n_classes
    return ArrayDataset(x, y)


def make_al(n=20, **kwargs):
    al = ActiveLearningDataset(make_arrays(n), **kwargs)
    al.clock = lambda: T0
    return al


def snapshot(al):
    return json.dumps(al.state_dict(), sort_keys=True)


# ---------------------------------------------------------------- ids


def test_default_ids_are_positions_and_views_report_ids():
    al = make_al(6)
    assert al.ids.tolist() == list(range(6))
    al.label([4, 1], [0, 2])
    assert al.labelled_ids.tolist() == [1, 4]
    assert al.pool_ids.tolist() == [0, 2, 3, 5]
    assert al.labelled.ids.tolist() == [1, 4]
    assert al.pool.ids.tolist() == [0, 2, 3, 5]
    assert not al.ids.flags.writeable


def test_string_ids_address_samples_not_positions():
    al = make_al(4, ids=["d", "c", "b", "a"], classes=["cat", "dog", "owl"])
    al.label(["a", "d"], ["owl", 1])
    assert al.labelled_ids.tolist() == ["d", "a"]  # dataset order
    assert al.label_of("a") == "owl" and al.label_of("d") == "dog" and al.label_of("c") is None
    x, y = al.labelled[1]  # "a" is dataset position 3
    assert torch.equal(x, al.dataset.x[3]) and y == 2


def test_numpy_ids_from_views_are_accepted():
    al = make_al(10, ids=np.arange(100, 110))
    al.label(np.array([103, 107]))
    al.unlabel(al.labelled.ids[:1])
    assert al.labelled_ids.tolist() == [107]


def test_duplicate_ids_rejected_with_name():
    with pytest.raises(ValueError, match="'b'"):
        ActiveLearningDataset(make_arrays(3), ids=["a", "b", "b"])
    with pytest.raises(ValueError, match="all ints or all strs"):
        ActiveLearningDataset(make_arrays(2), ids=[1, "b"])
    with pytest.raises(ValueError, match="3 ids"):
        ActiveLearningDataset(make_arrays(2), ids=[1, 2, 3])


# ---------------------------------------------------------------- label / errors change nothing


def test_label_none_uses_own_targets_and_records_metadata():
    al = make_al(9, classes=3)
    al.label([2, 7], round=3, source="human", annotator="ann")
    row = al.history().iloc[0].to_dict()
    assert row == {"id": 2, "label": 2, "round": 3, "source": "human", "annotator": "ann",
                   "labelled_at": T0_ISO}
    assert al.label_of(7) == 1


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda al: al.label([1, 99], [0, 1]), KeyError, "99"),
        (lambda al: al.label(["x"], [0]), KeyError, "'x'"),
        (lambda al: al.label([True], [0]), KeyError, "True"),
        (lambda al: al.label([1, 2], [0, 7]), ValueError, "id 2.*7|7.*id 2"),
        (lambda al: al.label([1, 2], [0, -1]), ValueError, "-1"),
        (lambda al: al.label([1, 2], [0, "cow"]), ValueError, "cow"),
        (lambda al: al.label([1, 2], [0, 1.0]), ValueError, "1.0"),
        (lambda al: al.label([1, 1], [0, 0]), ValueError, "more than once"),
        (lambda al: al.label([1, 5], [0, 0]), ValueError, "id 5 already labelled"),
        (lambda al: al.label([1, 2], [0]), ValueError, "1 labels for 2 ids"),
        (lambda al: al.label([1], [0], source="guess"), ValueError, "source"),
        (lambda al: al.label([1], [0], round=-1), ValueError, "round"),
        (lambda al: al.label([1], [0], annotator=3), ValueError, "annotator"),
        (lambda al: al.label([1], [0], labelled_at=datetime(2024, 1, 1)), ValueError, "timezone"),
        (lambda al: al.label([1], [0], labelled_at="yesterday"), ValueError, "ISO-8601"),
        (lambda al: al.unlabel([5, 6]), ValueError, "id 6 is not labelled"),
        (lambda al: al.unlabel([5, 5]), ValueError, "more than once"),
        (lambda al: al.unlabel([5, 1000]), KeyError, "1000"),
        (lambda al: al.relabel([1], [0]), ValueError, "id 1 is not labelled"),
        (lambda al: al.relabel([5], [3]), ValueError, "3"),
        (lambda al: al.label_randomly(50, 0), ValueError, "only 19"),
        (lambda al: al.label_randomly(-1, 0), ValueError, "non-negative"),
    ],
)
def test_bad_calls_raise_clear_errors_and_change_nothing(call, error, match):
    al = make_al(20, classes=3)
    al.label([5], [1])
    before = snapshot(al)
    with pytest.raises(error, match=match):
        call(al)
    assert snapshot(al) == before
    assert al.n_labelled == 1


def test_class_names_map_to_indices_and_history_shows_names():
    al = make_al(6, classes=["neg", "pos"])
    al.label([0, 1, 2], ["pos", 0, np.int64(1)])
    assert al.labelled.labels.tolist() == [1, 0, 1]
    assert al.history()["label"].tolist() == ["pos", "neg", "pos"]
    assert al.n_classes == 2 and al.classes == ["neg", "pos"]


def test_any_non_negative_label_accepted_without_classes():
    al = make_al(3)
    al.label([0, 1], [0, 1234])
    assert al.labelled.labels.tolist() == [0, 1234]
    with pytest.raises(ValueError, match="class name"):
        al.label([2], ["cat"])


def test_relabel_records_correction_and_keeps_round():
    al = make_al(5, classes=3)
    al.label([3], [0], round=2)
    later = T0 + timedelta(hours=1)
    al.relabel([3], [2], annotator="reviewer", labelled_at=later)
    row = al.history().iloc[0]
    assert (row["label"], row["round"], row["source"], row["annotator"]) == (2, 2, "correction", "reviewer")
    assert row["labelled_at"] == "2024-05-01T13:00:00.000000Z"
    al.relabel(3, 1, round=4)
    assert al.history().iloc[0]["round"] == 4


def test_timestamps_are_normalised_to_utc():
    al = make_al(3)
    plus2 = timezone(timedelta(hours=2))
    al.label([0], [0], labelled_at=datetime(2024, 5, 1, 14, 0, tzinfo=plus2))
    al.label([1], [0], labelled_at="2024-05-01T12:00:00Z")
    assert al.history()["labelled_at"].tolist() == [T0_ISO, T0_ISO]


def test_unlabel_returns_samples_to_pool():
    al = make_al(5)
    al.label([0, 1, 2])
    al.unlabel([1])
    assert not al.is_labelled(1) and al.is_labelled(2)
    assert al.n_labelled == 2 and al.n_pool == 3
    al.label([1], [2])  # can be labelled again afterwards
    assert al.label_of(1) == 2


def test_own_targets_from_getter_and_from_items():
    class Pairs(Dataset):  # no .targets: the oracle falls back to item[1]
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(1), 3 - i

    al = ActiveLearningDataset(Pairs())
    al.label([0, 3])
    assert al.labelled.labels.tolist() == [3, 0]
    al2 = ActiveLearningDataset(Pairs(), target_getter=lambda ds, pos: 9)
    al2.label([1])
    assert al2.label_of(1) == 9
    unlabelled = ActiveLearningDataset(torch.zeros(4, 2))  # items are bare x
    with pytest.raises(ValueError, match="no own label for sample id 2"):
        unlabelled.label([2])
    assert unlabelled.n_labelled == 0


# ---------------------------------------------------------------- label_randomly


def test_label_randomly_is_deterministic_and_draws_from_pool():
    a, b = make_al(50), make_al(50)
    a.label([0, 1, 2])
    b.label([0, 1, 2])
    ids_a = a.label_randomly(10, 7, round=1)
    assert ids_a.tolist() == b.label_randomly(10, 7, round=1).tolist()
    assert len(set(ids_a.tolist())) == 10 and not set(ids_a.tolist()) & {0, 1, 2}
    assert a.n_labelled == 13
    assert set(a.history().query("source == 'random'")["id"]) == set(ids_a.tolist())
    assert make_al(50).label_randomly(10, 8).tolist() != make_al(50).label_randomly(10, 7).tolist()


def test_label_randomly_with_oracle_and_generator_seed():
    al = make_al(30, classes=3)
    rng = np.random.default_rng(0)
    ids = al.label_randomly(4, rng, oracle=lambda ids: [2] * len(ids))
    assert al.labelled.labels.tolist() == [2, 2, 2, 2]
    assert sorted(ids.tolist()) == al.labelled_ids.tolist()
    assert al.label_randomly(0, 1).tolist() == []


# ---------------------------------------------------------------- views


def test_views_hide_labels_and_apply_transforms():
    data = make_arrays(8)
    al = ActiveLearningDataset(data, transform=lambda x: x * 10, pool_transform=lambda x: -x)
    al.label([2, 5], [1, 0])  # deliberately different from the dataset's own targets (2, 2)
    lab, pool = al.labelled, al.pool
    assert isinstance(lab, Dataset) and isinstance(pool, Dataset)
    assert len(lab) == 2 and len(pool) == 6
    x, y = lab[0]
    assert torch.equal(x, data.x[2] * 10) and y == 1
    assert torch.equal(pool[0], -data.x[0])
    assert all(isinstance(pool[i], torch.Tensor) for i in range(len(pool)))  # x only, no label
    with pytest.raises(IndexError):
        pool[6]
    al.pool_transform = None  # falls back to transform
    assert torch.equal(al.pool[0], data.x[0] * 10)


def test_views_are_snapshots():
    al = make_al(5)
    pool = al.pool
    al.label([0, 1])
    assert len(pool) == 5 and len(al.pool) == 3


def test_views_work_with_dataloader():
    al = make_al(10, classes=3)
    al.label(range(0, 10, 2))
    xs, ys = zip(*DataLoader(al.labelled, batch_size=2))
    assert torch.cat(ys).tolist() == [0, 2, 1, 0, 2]
    assert torch.cat(xs).shape == (5, 2)
    batches = list(DataLoader(al.pool, batch_size=4))
    assert [b.shape for b in batches] == [(4, 2), (1, 2)]


# ---------------------------------------------------------------- history & state


def labelled_example():
    al = make_al(12, ids=[f"s{i}" for i in range(12)], classes=["a", "b", "c"])
    al.label(["s3", "s1"], round=0, source="import")
    al.clock = lambda: T0 + timedelta(minutes=5)
    al.label(["s0"], ["c"], round=1, source="human", annotator="ann")
    al.label_randomly(3, 2, round=1)
    al.relabel(["s1"], ["a"], annotator="rev", labelled_at=T0 - timedelta(days=1))
    return al


def test_history_columns_and_order():
    h = labelled_example().history()
    assert tuple(h.columns) == HISTORY_COLUMNS
    assert len(h) == 6
    keys = list(zip(h["round"], h["labelled_at"]))
    assert keys == sorted(keys)
    assert h["id"].tolist()[:2] == ["s1", "s3"]  # round 0: the correction is older, comes first
    assert set(h["source"]) == {"import", "human", "random", "correction"}


def test_history_round_trip_including_csv(tmp_path):
    al = labelled_example()
    frame = al.history()
    frame.to_csv(tmp_path / "labels.csv", index=False)
    restored = ActiveLearningDataset.from_history(
        make_arrays(12), pd.read_csv(tmp_path / "labels.csv"),
        ids=[f"s{i}" for i in range(12)], classes=["a", "b", "c"],
    )
    assert restored.state_dict() == al.state_dict()
    pd.testing.assert_frame_equal(restored.history(), frame)


def test_load_history_validates_and_changes_nothing():
    al = labelled_example()
    before = snapshot(al)
    good = al.history()
    for column, value, error, match in [
        ("id", "nope", KeyError, "nope"),
        ("label", "zebra", ValueError, "zebra"),
        ("source", "rumour", ValueError, "source"),
        ("round", -2, ValueError, "round"),
        ("labelled_at", "not a time", ValueError, "ISO-8601"),
    ]:
        bad = good.copy()
        bad[column] = bad[column].astype(object)
        bad.loc[2, column] = value
        with pytest.raises(error, match=match):
            al.load_history(bad)
        assert snapshot(al) == before
    with pytest.raises(ValueError, match="more than once"):
        al.load_history(pd.concat([good, good.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks column"):
        al.load_history(good.drop(columns=["round"]))
    assert snapshot(al) == before


def test_state_dict_is_json_and_round_trips_exactly():
    al = labelled_example()
    state = json.loads(json.dumps(al.state_dict()))
    other = ActiveLearningDataset(make_arrays(12), ids=[f"s{i}" for i in range(12)], classes=["a", "b", "c"])
    other.label(["s11"])  # replaced, not merged
    other.load_state_dict(state)
    assert other.state_dict() == al.state_dict()
    assert other.labelled.ids.tolist() == al.labelled.ids.tolist()
    assert other.labelled.labels.tolist() == al.labelled.labels.tolist()
    assert other.pool.ids.tolist() == al.pool.ids.tolist()
    for (x1, y1), (x2, y2) in zip(other.labelled, al.labelled):
        assert torch.equal(x1, x2) and y1 == y2


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (lambda s: s.update(version=99), ValueError, "version"),
        (lambda s: s.pop("rounds"), ValueError, "rounds"),
        (lambda s: s.update(classes=["a", "b"]), ValueError, "classes"),
        (lambda s: s["ids"].__setitem__(0, "s99"), KeyError, "s99"),
        (lambda s: s["labels"].__setitem__(0, 3), ValueError, "3"),
        (lambda s: s["sources"].__setitem__(0, "x"), ValueError, "source"),
        (lambda s: s["labels"].pop(), ValueError, "equal length"),
    ],
)
def test_load_state_dict_rejects_bad_state_and_changes_nothing(mutate, error, match):
    al = labelled_example()
    state = al.state_dict()
    mutate(state)
    target = make_al(12, ids=[f"s{i}" for i in range(12)], classes=["a", "b", "c"])
    target.label(["s5"], ["b"])
    before = snapshot(target)
    with pytest.raises(error, match=match):
        target.load_state_dict(state)
    assert snapshot(target) == before


def test_save_load_round_trip_is_atomic_json(tmp_path):
    al = labelled_example()
    path = tmp_path / "state.json"
    al.save(path)
    assert json.loads(path.read_text()) == al.state_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    other = make_al(12, ids=[f"s{i}" for i in range(12)], classes=["a", "b", "c"])
    other.load(path)
    assert other.state_dict() == al.state_dict()
    path.write_text("{not json")
    with pytest.raises(ValueError, match="state.json"):
        other.load(path)
    assert other.state_dict() == al.state_dict()


def test_repr_shows_counts():
    al = make_al(7, classes=3)
    al.label([0, 1])
    assert repr(al) == "ActiveLearningDataset(n=7, labelled=2, pool=5, classes=3)"
    assert len(al) == 7


def test_million_sample_pool_is_cheap():
    n = 1_000_000
    al = ActiveLearningDataset(range(n), classes=10)  # range: an indexable "dataset" of ints
    start = time.perf_counter()
    ids = al.label_randomly(2000, 0, oracle=lambda ids: ids % 10)
    al.unlabel(ids[:1000])
    pool = al.pool
    elapsed = time.perf_counter() - start
    assert al.n_labelled == 1000 and len(pool) == n - 1000
    assert pool[0] == pool.ids[0]
    assert elapsed < 5.0  # O(k) updates + one O(N) view; a per-sample Python loop over N would not pass


# ---------------------------------------------------------------- property test


ops = st.lists(
    st.tuples(st.sampled_from(["label", "unlabel"]), st.lists(st.integers(0, 11), max_size=4)),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(ops)
def test_label_unlabel_sequences_match_reference_model(sequence):
    al = make_al(12, classes=3)
    reference: set[int] = set()
    for op, ids in sequence:
        distinct = len(set(ids)) == len(ids)
        valid = distinct and (
            reference.isdisjoint(ids) if op == "label" else reference.issuperset(ids)
        )
        before = snapshot(al)
        if valid:
            getattr(al, op)(ids)
            reference = reference | set(ids) if op == "label" else reference - set(ids)
        else:
            with pytest.raises(ValueError):
                getattr(al, op)(ids)
            assert snapshot(al) == before
        assert al.labelled_ids.tolist() == sorted(reference)
        assert al.pool_ids.tolist() == sorted(set(range(12)) - reference)
        assert al.n_labelled == len(reference) == len(al.labelled)
        assert al.labelled.labels.tolist() == [i % 3 for i in sorted(reference)]
