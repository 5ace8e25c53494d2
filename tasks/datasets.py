"""The workspace's images and labels as al_lib datasets, shared by the train and score steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Subset

from al_lib.data import ActiveLearningDataset, ManifestDataset
from tasks.workspace import MANIFEST, RoundInputs, Workspace, model_spec


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


def load_workspace_data(ws: Workspace, inputs: RoundInputs) -> WorkspaceData:
    """Build :class:`WorkspaceData` from the round's inputs (``ws.inputs()``: manifest and labels
    already read and validated, not read again); decodes no image (that happens on access).

    Images are decoded to the channels of ``model.input_shape`` and go through the model's eval
    transform (resize policy, grey → RGB where the network takes RGB, normalisation: see
    :class:`al_lib.transforms.TransformPolicy`); training augmentation is applied by ``fit``.
    """
    params = inputs.params
    policy = model_spec(params, ws.root).transforms
    images = ManifestDataset(ws.path(MANIFEST), root=ws.root, mode="L" if policy.channels == 1 else "RGB",
                             transform=policy.eval_transform(), table=inputs.manifest)
    state = ActiveLearningDataset(_InputsOnly(images), ids=images.ids, classes=params.classes)
    if len(inputs.labels):
        state.load_history(inputs.labels)
    return WorkspaceData(state, inputs.held_out)


class _InputsOnly(torch.utils.data.Dataset):
    """A manifest with a label column yields (x, y); the workspace's labels come from labels.csv."""

    def __init__(self, images: ManifestDataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        item = self.images[index]
        return item[0] if isinstance(item, tuple) else item
