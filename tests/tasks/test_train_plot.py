"""tasks/train.py: the learning-curve plot, a declared output of the train step."""

import pandas as pd
from PIL import Image

from tasks.train import plot_rounds
from tasks.workspace import LEARNING_CURVE, Workspace


def test_learning_curve_is_written_without_any_accuracy(tmp_path):
    """No test labels and no validation split (``training.val_fraction: 0``): the step still writes
    its declared plot (DVC refuses a missing output), showing the training loss."""
    rows = pd.DataFrame({"round": [0, 1], "n_labelled": [20, 30], "train_loss": [0.9, 0.6]})
    plot_rounds(Workspace(tmp_path), rows)
    with Image.open(tmp_path / LEARNING_CURVE) as image:
        assert image.format == "PNG" and image.width > 100


def test_learning_curve_prefers_test_accuracy(tmp_path, monkeypatch):
    import tasks.train as train

    seen = {}
    monkeypatch.setattr(train, "plot_learning_curves", lambda curves, *, y, path, title: seen.update(y=y))
    rows = pd.DataFrame({"round": [0], "n_labelled": [20], "train_loss": [0.9], "val_accuracy": [0.5],
                         "test_accuracy": [0.6]})
    plot_rounds(Workspace(tmp_path), rows)
    assert seen["y"] == "test_accuracy"
    plot_rounds(Workspace(tmp_path), rows.drop(columns="test_accuracy"))
    assert seen["y"] == "val_accuracy"
