"""Labelled/pool state of an active-learning experiment, keyed by stable sample ids.

:class:`ActiveLearningDataset` wraps any indexable dataset and records which samples carry a
label, which label, when, from whom and in which round. Every public method takes and returns
sample *ids* (ints or strs fixed for life), never positions in the pool: the pool shrinks every
round, ids do not.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from al_lib.atomic import atomic_write_text
from al_lib.labels import (
    LABEL_COLUMNS,
    SOURCES,
    check_annotator as _check_annotator,
    check_round,
    check_source as _source_code,
    is_missing as _is_missing,
    labels_frame,
    utc_iso as _utc_iso,
    utc_now,
)
from al_lib.seeding import SeedLike, check_random_state

logger = logging.getLogger(__name__)

__all__ = ["ActiveLearningDataset", "HISTORY_COLUMNS", "SOURCES"]

#: Columns of :meth:`ActiveLearningDataset.history`: the labels table of :mod:`al_lib.labels`.
HISTORY_COLUMNS = LABEL_COLUMNS
STATE_VERSION = 1
_STATE_KEYS = ("ids", "labels", "rounds", "sources", "annotators", "labelled_at")
_UNLABELLED = -1


class ActiveLearningDataset:
    """Labelled set and unlabelled pool over a wrapped dataset, by stable sample id.

    Parameters
    ----------
    dataset : indexable
        Any object with ``len()`` and ``[position]`` (a torch ``Dataset``, an
        :class:`~al_lib.data.ArrayDataset`, an image folder ...). An item is either ``x`` or a
        tuple/list ``(x, y, ...)``; only ``x`` is ever shown through the views.
    ids : sequence of int or str, optional
        One unique id per sample, aligned with dataset positions (e.g. manifest ids). Defaults
        to ``0 .. len(dataset) - 1``. All ints or all strs.
    classes : sequence of str, int or None
        Class names (labels are then stored as indices into it and may be given as names), or
        the number of classes, or None to accept any non-negative int label.
    transform : callable, optional
        Applied to ``x`` in the :attr:`labelled` view (and in :attr:`pool` when
        ``pool_transform`` is None).
    pool_transform : callable, optional
        Applied to ``x`` in the :attr:`pool` view (e.g. no augmentation when scoring).
    target_getter : callable, optional
        ``target_getter(dataset, position) -> label``: the dataset's own label, used when
        :meth:`label` gets ``labels=None`` (oracle simulation). Without it, ``dataset.targets``
        is used when present, else ``dataset[position][1]``.

    Attributes
    ----------
    clock : callable
        ``clock() -> datetime`` (timezone-aware) stamps labels not given ``labelled_at``.
        Replace it to get fixed timestamps in tests.

    Notes
    -----
    Labelling or unlabelling ``k`` ids costs O(k); building a view costs O(N) once per access
    (not per item), so take a view once per round rather than once per batch.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        ids: Sequence[int | str] | np.ndarray | None = None,
        classes: Sequence[str] | int | None = None,
        transform: Callable | None = None,
        pool_transform: Callable | None = None,
        target_getter: Callable[[Any, int], Any] | None = None,
    ):
        self._dataset = dataset
        n = len(dataset)
        self._ids, self._index = _build_ids(ids, n)
        self._classes, self._n_classes = _check_classes(classes)
        self._class_index = {c: i for i, c in enumerate(self._classes or ())}
        self.transform = transform
        self.pool_transform = pool_transform
        self.target_getter = target_getter
        self.clock: Callable[[], datetime] = utc_now
        self._table = _LabelTable(n)

    @classmethod
    def from_history(cls, dataset: Any, history: pd.DataFrame, **kwargs) -> ActiveLearningDataset:
        """Build an instance over ``dataset`` (``kwargs`` as for the constructor) and restore the
        labels in ``history`` (see :meth:`load_history`)."""
        al = cls(dataset, **kwargs)
        al.load_history(history)
        return al

    # ------------------------------------------------------------------ read-only state

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, labelled={self.n_labelled}, "
            f"pool={self.n_pool}, classes={self._classes_spec()!r})"
        )

    @property
    def dataset(self) -> Any:
        """The wrapped dataset."""
        return self._dataset

    @property
    def ids(self) -> np.ndarray:
        """All sample ids in dataset order, shape ``[N]`` (read-only)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def classes(self) -> list[str] | None:
        """Class names, or None when classes were given as a count or not at all."""
        return None if self._classes is None else list(self._classes)

    @property
    def n_classes(self) -> int | None:
        """Number of classes, or None when any non-negative int label is accepted."""
        return self._n_classes

    @property
    def n_labelled(self) -> int:
        """Number of labelled samples."""
        return self._table.count

    @property
    def n_pool(self) -> int:
        """Number of unlabelled samples."""
        return len(self) - self._table.count

    @property
    def labelled_ids(self) -> np.ndarray:
        """Ids of the labelled samples in dataset order, shape ``[n_labelled]``."""
        return self._ids[self._table.labelled_positions()]

    @property
    def pool_ids(self) -> np.ndarray:
        """Ids of the unlabelled samples in dataset order, shape ``[n_pool]``."""
        return self._ids[self._table.pool_positions()]

    def is_labelled(self, id_: int | str) -> bool:
        """Whether sample ``id_`` has a label. Raises ``KeyError`` for an unknown id."""
        return bool(self._table.label[self._position(id_)] != _UNLABELLED)

    def label_of(self, id_: int | str) -> int | str | None:
        """The stored label of ``id_`` (a class name when classes are names), None if unlabelled."""
        code = int(self._table.label[self._position(id_)])
        return None if code == _UNLABELLED else self._decode(code)

    @property
    def labelled(self) -> LabelledView:
        """Snapshot of the labelled set: a torch Dataset of ``(transform(x), label)``.

        ``label`` is the stored int class index, not the wrapped dataset's own target. The view
        is fixed at access time; later labelling does not change it.
        """
        positions = self._table.labelled_positions()
        return LabelledView(
            self._dataset, positions, self._ids[positions], self._table.label[positions],
            self.transform,
        )

    @property
    def pool(self) -> PoolView:
        """Snapshot of the unlabelled pool: a torch Dataset of ``pool_transform(x)`` only.

        Never returns a label. Falls back to ``transform`` when ``pool_transform`` is None.
        Fixed at access time; later labelling does not change it.
        """
        positions = self._table.pool_positions()
        transform = self.transform if self.pool_transform is None else self.pool_transform
        return PoolView(self._dataset, positions, self._ids[positions], transform)

    # ------------------------------------------------------------------ changing labels

    def label(
        self,
        ids: Iterable[int | str] | int | str,
        labels: Iterable[int | str] | int | str | None = None,
        *,
        round: int = 0,
        source: str = "oracle",
        annotator: str | None = None,
        labelled_at: datetime | str | None = None,
    ) -> None:
        """Label pool samples.

        Parameters
        ----------
        ids : id or sequence of ids, length k
            Samples to label; all must be known, unlabelled and distinct.
        labels : label or sequence of labels, length k, optional
            Class indices, or class names when ``classes`` are names. None takes each sample's
            own target from the wrapped dataset (oracle simulation).
        round : int
            Acquisition round (>= 0).
        source : str
            One of :data:`SOURCES`.
        annotator : str, optional
            Who labelled.
        labelled_at : datetime or ISO-8601 str, optional
            Timezone-aware time of labelling; defaults to ``self.clock()``. Stored as UTC.

        Raises
        ------
        KeyError
            An unknown id (named).
        ValueError
            A duplicate or already-labelled id, a label outside the class set (id and label
            named), a bad round/source/annotator/timestamp. Nothing changes on any error.
        """
        ids = _as_list(ids)
        meta = self._metadata(round, source, annotator, labelled_at)
        positions = self._positions(ids)
        self._require_labelled(ids, positions, False, "already labelled; use relabel() to correct it")
        values = self._own_targets(positions) if labels is None else _as_list(labels, len(ids))
        codes = self._encode_all(ids, values)
        self._table.set(positions, codes, *meta)
        logger.debug("labelled %d samples (round %s, source %s)", len(ids), round, source)

    def relabel(
        self,
        ids: Iterable[int | str] | int | str,
        labels: Iterable[int | str] | int | str,
        *,
        round: int | None = None,
        annotator: str | None = None,
        labelled_at: datetime | str | None = None,
    ) -> None:
        """Correct the labels of labelled samples; recorded with source ``"correction"``.

        ``round=None`` keeps each sample's round. Other arguments and errors as in
        :meth:`label`, except that every id must already be labelled. Nothing changes on error.
        """
        ids = _as_list(ids)
        new_round, source, annotator, stamp = self._metadata(
            0 if round is None else round, "correction", annotator, labelled_at
        )
        positions = self._positions(ids)
        self._require_labelled(ids, positions, True, "is not labelled; use label()")
        codes = self._encode_all(ids, _as_list(labels, len(ids)))
        rounds = self._table.round[positions] if round is None else new_round
        self._table.set(positions, codes, rounds, source, annotator, stamp)
        logger.debug("relabelled %d samples", len(ids))

    def unlabel(self, ids: Iterable[int | str] | int | str) -> None:
        """Return labelled samples to the pool (forgetting their label and its metadata).

        Raises ``KeyError`` for an unknown id and ``ValueError`` for a duplicate or unlabelled
        id; nothing changes on error.
        """
        ids = _as_list(ids)
        positions = self._positions(ids)
        self._require_labelled(ids, positions, True, "is not labelled")
        self._table.clear(positions)
        logger.debug("unlabelled %d samples", len(ids))

    def label_randomly(
        self,
        n: int,
        seed: SeedLike,
        *,
        round: int = 0,
        source: str = "random",
        annotator: str | None = None,
        oracle: Callable[[np.ndarray], Sequence[int | str]] | None = None,
    ) -> np.ndarray:
        """Label ``n`` pool samples drawn uniformly without replacement.

        Parameters
        ----------
        n : int
            How many; at most :attr:`n_pool`.
        seed : int, numpy Generator or None
            Same seed and same pool give the same ids.
        oracle : callable, optional
            ``oracle(ids [n]) -> labels [n]``; default: the wrapped dataset's own targets.

        Returns
        -------
        ids : ndarray, shape [n]
            The ids labelled, in the order drawn.
        """
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative int, got {n!r}")
        pool = self._table.pool_positions()
        if n > len(pool):
            raise ValueError(f"cannot label {n} samples at random: only {len(pool)} in the pool")
        chosen = pool[check_random_state(seed).choice(len(pool), size=int(n), replace=False)]
        ids = self._ids[chosen]
        labels = None if oracle is None else oracle(ids.copy())
        self.label(ids, labels, round=round, source=source, annotator=annotator)
        return ids

    # ------------------------------------------------------------------ history & persistence

    def history(self) -> pd.DataFrame:
        """The labelled set as a frame, one row per labelled sample.

        Returns
        -------
        DataFrame
            Columns exactly :data:`HISTORY_COLUMNS` (``id,label,round,source,annotator,
            labelled_at``), ordered by (round, labelled_at, dataset position). ``label`` holds
            class names when classes are names, else ints; ``labelled_at`` is an ISO-8601 UTC
            string.
        """
        t = self._table
        pos = t.labelled_positions()
        stamps = t.labelled_at[pos].astype(str)
        pos = pos[np.lexsort((pos, stamps, t.round[pos]))]
        labels = t.label[pos]
        return labels_frame({
            "id": self._ids[pos].tolist(),
            "label": (labels if self._classes is None else np.asarray(self._classes, object)[labels]).tolist(),
            "round": t.round[pos],
            "source": np.asarray(SOURCES, object)[t.source[pos]],
            "annotator": t.annotator[pos],
            "labelled_at": t.labelled_at[pos],
        })

    def load_history(self, history: pd.DataFrame) -> None:
        """Replace all labels by those in ``history`` (a frame as returned by :meth:`history`).

        Labels may be class names (str) or indices (int); missing annotators (NaN) become None.
        Validated row by row like :meth:`label`; nothing changes on error. When reading
        ``labels.csv`` for str ids or class names that look numeric, pass
        ``dtype={"id": str, "label": str}`` to ``pandas.read_csv``.
        """
        missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
        if missing:
            raise ValueError(f"history lacks column(s) {missing}; expected {list(HISTORY_COLUMNS)}")
        columns = [history[c].tolist() for c in HISTORY_COLUMNS]
        columns[4] = [None if _is_missing(a) else a for a in columns[4]]
        self._table = self._build_table(*columns)
        logger.info("loaded %d labels from history", self.n_labelled)

    def state_dict(self) -> dict:
        """The label state as a JSON-serialisable dict (labelled samples in dataset order).

        Keys: ``version``, ``classes``, ``ids``, ``labels`` (int class indices), ``rounds``,
        ``sources``, ``annotators``, ``labelled_at``.
        """
        t = self._table
        pos = t.labelled_positions()
        return {
            "version": STATE_VERSION,
            "classes": self._classes_spec(),
            "ids": self._ids[pos].tolist(),
            "labels": t.label[pos].tolist(),
            "rounds": t.round[pos].tolist(),
            "sources": [SOURCES[s] for s in t.source[pos]],
            "annotators": t.annotator[pos].tolist(),
            "labelled_at": t.labelled_at[pos].tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the label state saved by :meth:`state_dict`, replacing the current one.

        Raises ``ValueError`` (``KeyError`` for unknown ids) when the state is malformed, has a
        different class set or names ids absent from this dataset; nothing changes on error.
        """
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict, got {type(state).__name__}")
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"unsupported state version {version!r}; expected {STATE_VERSION}")
        missing = [k for k in ("classes", *_STATE_KEYS) if k not in state]
        if missing:
            raise ValueError(f"state is missing key(s) {missing}")
        mine = self._classes_spec()
        if state["classes"] != mine:
            raise ValueError(f"state has classes {state['classes']!r} but this dataset has {mine!r}")
        self._table = self._build_table(*(state[k] for k in _STATE_KEYS))
        logger.info("loaded %d labels from state dict", self.n_labelled)

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` to ``path`` as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.state_dict(), separators=(",", ":")) + "\n")

    def load(self, path: str | os.PathLike) -> None:
        """Restore the state written by :meth:`save`; errors name the file, nothing changes."""
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
            self.load_state_dict(state)
        except (ValueError, KeyError) as exc:  # JSONDecodeError is a ValueError
            kind = KeyError if isinstance(exc, KeyError) else ValueError
            raise kind(f"{os.fspath(path)}: {_message(exc)}") from exc

    # ------------------------------------------------------------------ internals

    def _position(self, id_: Any) -> int:
        """Dataset position of one id; KeyError naming it when unknown."""
        key = _scalar(id_)
        if isinstance(key, (str, numbers.Integral)) and not isinstance(key, bool):
            if self._index is None:  # ids are 0..N-1: no dict needed
                if isinstance(key, numbers.Integral) and 0 <= key < len(self._ids):
                    return int(key)
            elif (pos := self._index.get(key)) is not None:
                return pos
        raise KeyError(f"unknown sample id {key!r}")

    def _positions(self, ids: list) -> np.ndarray:
        """Positions of ``ids`` (int64 ``[k]``); KeyError for an unknown id, ValueError for a
        duplicate."""
        positions = np.fromiter((self._position(i) for i in ids), np.int64, len(ids))
        if len(np.unique(positions)) != len(positions):
            dup = ids[_first_duplicate(positions.tolist())]
            raise ValueError(f"sample id {_scalar(dup)!r} is given more than once")
        return positions

    def _require_labelled(self, ids: list, positions: np.ndarray, wanted: bool, problem: str) -> None:
        """Raise ValueError naming the first id whose labelled state is not ``wanted``."""
        bad = (self._table.label[positions] != _UNLABELLED) != wanted
        if bad.any():
            raise ValueError(f"sample id {_scalar(ids[int(np.argmax(bad))])!r} {problem}")

    def _own_targets(self, positions: np.ndarray) -> list:
        """The wrapped dataset's own labels at ``positions`` (oracle simulation)."""
        if self.target_getter is not None:
            return [self.target_getter(self._dataset, int(p)) for p in positions]
        targets = getattr(self._dataset, "targets", None)
        if targets is not None:
            return [targets[int(p)] for p in positions]
        out = []
        for p in positions:
            item = self._dataset[int(p)]
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise ValueError(
                    f"the dataset has no own label for sample id {_scalar(self._ids[p])!r} (no targets, "
                    "items are not (x, y) tuples): pass labels explicitly"
                )
            out.append(item[1])
        return out

    def _encode(self, id_: Any, value: Any) -> int:
        """Validate one label and return its int class index."""
        value = _scalar(value)
        if isinstance(value, str):
            code = self._class_index.get(value)
            if code is not None:
                return code
            problem = f"is not a class name (classes: {self._classes})"
        elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
            problem = "must be an int class index"
        elif value < 0 or (self._n_classes is not None and value >= self._n_classes):
            problem = f"is out of range [0, {self._n_classes if self._n_classes else 'inf'})"
        else:
            return int(value)
        raise ValueError(f"label {value!r} for sample id {_scalar(id_)!r} {problem}")

    def _encode_all(self, ids: list, values: list) -> np.ndarray:
        return np.fromiter((self._encode(i, v) for i, v in zip(ids, values)), np.int64, len(ids))

    def _classes_spec(self) -> list[str] | int | None:
        """``classes`` as given to the constructor: names, a count or None."""
        return self.classes if self._classes is not None else self._n_classes

    def _decode(self, code: int) -> int | str:
        return code if self._classes is None else self._classes[code]

    def _metadata(self, round: Any, source: Any, annotator: Any, labelled_at: Any) -> tuple:
        """Validated (round, source code, annotator, UTC timestamp) shared by a whole call."""
        stamp = self.clock() if labelled_at is None else labelled_at
        return _check_round(round), _source_code(source), _check_annotator(annotator), _utc_iso(stamp)

    def _build_table(self, ids, labels, rounds, sources, annotators, stamps) -> _LabelTable:
        """A fresh table holding exactly the given labels, validated; the caller swaps it in."""
        columns = (ids, labels, rounds, sources, annotators, stamps)
        if not all(isinstance(c, (list, tuple)) for c in columns) or len(set(map(len, columns))) != 1:
            raise ValueError("label columns must be lists of equal length")
        ids = list(ids)
        positions = self._positions(ids)
        codes = self._encode_all(ids, labels)
        table = _LabelTable(len(self))
        table.set(
            positions, codes,
            np.asarray(_per_id(_check_round, ids, rounds), np.int64),
            np.asarray(_per_id(_source_code, ids, sources), np.int8),
            np.asarray(_per_id(_check_annotator, ids, annotators), object),
            np.asarray(_per_id(_utc_iso, ids, stamps), object),
        )
        return table


class _LabelTable:
    """Per-position label columns; ``label == -1`` marks the pool.

    Columnar numpy arrays keep a 1M-sample pool cheap and make (un)labelling k samples O(k).
    """

    def __init__(self, n: int):
        self.label = np.full(n, _UNLABELLED, np.int64)
        self.round = np.zeros(n, np.int64)
        self.source = np.zeros(n, np.int8)
        self.annotator = np.full(n, None, object)
        self.labelled_at = np.full(n, None, object)
        self.count = 0

    def set(self, positions, labels, rounds, sources, annotators, stamps) -> None:
        """Store labels (scalars broadcast) at distinct ``positions``."""
        self.count += int(np.count_nonzero(self.label[positions] == _UNLABELLED))
        self.label[positions] = labels
        self.round[positions] = rounds
        self.source[positions] = sources
        self.annotator[positions] = annotators
        self.labelled_at[positions] = stamps

    def clear(self, positions) -> None:
        """Return distinct labelled ``positions`` to the pool."""
        self.count -= len(positions)
        self.label[positions] = _UNLABELLED
        self.annotator[positions] = None
        self.labelled_at[positions] = None

    def labelled_positions(self) -> np.ndarray:
        return np.flatnonzero(self.label != _UNLABELLED)

    def pool_positions(self) -> np.ndarray:
        return np.flatnonzero(self.label == _UNLABELLED)


class _View(Dataset):
    """A fixed subset of the wrapped dataset, addressed by view position; ``.ids`` aligned."""

    def __init__(self, dataset: Any, positions: np.ndarray, ids: np.ndarray, transform: Callable | None):
        self._dataset = dataset
        self._positions = positions
        self.ids = ids
        self.transform = transform

    def __len__(self) -> int:
        return len(self._positions)

    def _x(self, index: int) -> Any:
        item = self._dataset[int(self._positions[index])]
        x = item[0] if isinstance(item, (tuple, list)) else item
        return x if self.transform is None else self.transform(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)})"


class LabelledView(_View):
    """Labelled samples: ``view[i] -> (x, label)`` with the stored int label.

    Attributes
    ----------
    ids : ndarray, shape [n]
        Sample ids aligned with view positions (dataset order).
    labels : ndarray of int64, shape [n]
        Stored class indices aligned with ``ids``.
    """

    def __init__(self, dataset, positions, ids, labels, transform):
        super().__init__(dataset, positions, ids, transform)
        self.labels = labels

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self._x(index), int(self.labels[index])


class PoolView(_View):
    """Unlabelled samples: ``view[i] -> x`` (never a label). ``ids`` as in :class:`LabelledView`."""

    def __getitem__(self, index: int) -> Any:
        return self._x(index)


# ---------------------------------------------------------------------- validation helpers


def _scalar(value: Any) -> Any:
    """numpy scalars and one-element tensors as plain Python values."""
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    return value


def _as_list(values: Any, expected: int | None = None) -> list:
    """A list from a scalar (str counts as scalar), sequence, array or tensor; checks length."""
    if isinstance(values, (str, bytes, numbers.Number)) or (
        isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim == 0
    ):
        out = [values]
    elif isinstance(values, (np.ndarray, torch.Tensor)):
        out = values.tolist()
    else:
        out = list(values)
    if expected is not None and len(out) != expected:
        raise ValueError(f"got {len(out)} labels for {expected} ids")
    return out


def _build_ids(ids: Any, n: int) -> tuple[np.ndarray, dict | None]:
    """Id array (int64 or object of str) and id->position dict (None when ids are 0..n-1)."""
    if ids is None:
        return np.arange(n, dtype=np.int64), None
    ids = _as_list(ids)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for a dataset of {n} samples")
    ids = [_scalar(i) for i in ids]
    if all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in ids):
        arr = np.asarray(ids, dtype=np.int64).reshape(n)
        if np.array_equal(arr, np.arange(n)):
            return arr, None
    elif all(isinstance(i, str) for i in ids):
        arr = np.empty(n, dtype=object)
        arr[:] = ids
    else:
        raise ValueError("ids must be all ints or all strs")
    keys = arr.tolist()
    index = {k: p for p, k in enumerate(keys)}
    if len(index) != n:
        raise ValueError(f"duplicate sample id {keys[_first_duplicate(keys)]!r}")
    return arr, index


def _first_duplicate(values: list) -> int:
    """Index of the first value seen before (the caller knows there is one)."""
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            return i
        seen.add(v)
    raise AssertionError("no duplicate")


def _check_classes(classes: Any) -> tuple[list[str] | None, int | None]:
    """(names, count) from a list of names, a count or None."""
    if classes is None:
        return None, None
    if isinstance(classes, numbers.Integral) and not isinstance(classes, bool):
        if classes < 1:
            raise ValueError(f"the number of classes must be >= 1, got {classes}")
        return None, int(classes)
    names = _as_list(classes)
    if not names or not all(isinstance(c, str) for c in names):
        raise ValueError("classes must be a non-empty sequence of str names, an int count, or None")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    return names, len(names)


def _per_id(check: Callable[[Any], Any], ids: list, values: Sequence) -> list:
    """``check`` applied to each value; a ValueError is re-raised naming the sample id."""
    out = []
    for id_, value in zip(ids, values):
        try:
            out.append(check(value))
        except ValueError as exc:
            raise ValueError(f"sample id {_scalar(id_)!r}: {exc}") from None
    return out


def _check_round(value: Any) -> int:
    return check_round(_scalar(value))


def _message(exc: BaseException) -> str:
    """An exception's message without KeyError's extra quotes."""
    return str(exc.args[0]) if exc.args else str(exc)
