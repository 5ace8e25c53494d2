"""The workspace's images and labels as al_lib datasets, shared by the train and score steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset

from al_lib.data import ActiveLearningDataset, ManifestDataset
from al_lib.data.images import image_to_tensor
from tasks.workspace import MANIFEST, Params, Workspace


class ResizeToTensor:
    """PIL image → float32 [C, H, W] in [0, 1], resized to the model's input size when needed."""

    def __init__(self, height: int, width: int) -> None:
        self.size = (int(width), int(height))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != self.size:
            image = image.resize(self.size, Image.Resampling.BILINEAR)
        return image_to_tensor(image)


@dataclass
class WorkspaceData:
    """All manifest images with ``data/labels.csv`` applied, and which ids are held out.

    Samples of a held-out split (manifest ``split`` in test/val) are never queried nor trained
    on; those with labels measure the model.
    """

    state: ActiveLearningDataset
    held_out: frozenset

    def _labelled_where(self, held_out: bool) -> Subset:
        view = self.state.labelled
        keep = [i for i, sid in enumerate(view.ids) if (sid in self.held_out) == held_out]
        subset = Subset(view, keep)
        subset.ids = view.ids[keep]
        return subset

    def train_set(self) -> Subset:
        """Labelled samples outside the held-out splits: items (x, label)."""
        return self._labelled_where(False)

    def eval_set(self) -> Subset:
        """Labelled samples of the held-out splits (possibly empty): items (x, label)."""
        return self._labelled_where(True)

    def candidates(self) -> Subset:
        """Unlabelled samples that may be queried: items x, with ``.ids``."""
        pool = self.state.pool
        keep = [i for i, sid in enumerate(pool.ids) if sid not in self.held_out]
        subset = Subset(pool, keep)
        subset.ids = pool.ids[keep]
        return subset


def load_workspace_data(ws: Workspace, params: Params) -> WorkspaceData:
    """Build :class:`WorkspaceData`; decodes no image (that happens on access)."""
    channels, height, width = params.input_shape
    images = ManifestDataset(ws.path(MANIFEST), root=ws.root, mode="L" if channels == 1 else "RGB",
                             transform=ResizeToTensor(height, width))
    state = ActiveLearningDataset(_InputsOnly(images), ids=images.ids, classes=params.classes)
    labels = ws.labels()
    if len(labels):
        state.load_history(labels)
    return WorkspaceData(state, frozenset(ws.held_out_ids()))


class _InputsOnly(torch.utils.data.Dataset):
    """A manifest with a label column yields (x, y); the workspace's labels come from labels.csv."""

    def __init__(self, images: ManifestDataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        item = self.images[index]
        return item[0] if isinstance(item, tuple) else item
