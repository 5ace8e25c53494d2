"""Dataset state for active learning (:class:`ActiveLearningDataset`), loaders for real data and
an imbalance helper. See ``docs/architecture.md`` (section ``al_lib.data``)."""

from al_lib.data.active_dataset import (
    HISTORY_COLUMNS,
    SOURCES,
    ActiveLearningDataset,
    LabelledView,
    PoolView,
)
from al_lib.data.images import ImageDecodeError, ImageFolderDataset, ManifestDataset, image_to_tensor
from al_lib.data.manifest import MANIFEST_COLUMNS, ManifestError, read_manifest
from al_lib.data.imbalance import make_imbalanced
from al_lib.data.sources import MNIST_SHA256, ArrayDataset, load_digits, load_mnist

__all__ = [
    "HISTORY_COLUMNS",
    "MANIFEST_COLUMNS",
    "MNIST_SHA256",
    "SOURCES",
    "ActiveLearningDataset",
    "ArrayDataset",
    "ImageDecodeError",
    "ImageFolderDataset",
    "LabelledView",
    "ManifestDataset",
    "ManifestError",
    "PoolView",
    "image_to_tensor",
    "load_digits",
    "load_mnist",
    "make_imbalanced",
    "read_manifest",
]
