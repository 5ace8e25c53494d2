import copy
import logging

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Subset, TensorDataset

from al_lib import metrics
from al_lib.models import build_model
from al_lib.bayesian import Ensemble
from al_lib.calibration import fit_validation_split
from al_lib.seeding import draw_seed, torch_generator
from al_lib.training import (FitResult, fit, fit_members, fit_summary, isolated_torch_rng, predict_proba,
                             snapshot_state)

FAST = {"progress": False, "device": "cpu"}


@pytest.fixture(scope="module")
def digits():
    """scikit-learn digits as ``(train, val)`` TensorDatasets of ``([1, 8, 8] float, int label)``."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def _cnn(seed=0):
    return build_model("gal_cnn", (1, 8, 8), 10, seed=seed, channels=16, hidden=64)


def _mlp(seed=0, hidden=256, out=10):
    with isolated_torch_rng(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, out))


def _val_loss(model, dataset):
    x, y = dataset.tensors
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model.eval()(x), y))


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_gal_cnn_learns_digits(digits):
    train, val = digits
    model = _cnn()
    result = fit(model, train, val_set=val, max_epochs=10, patience=3, lr=3e-3, **FAST)
    assert isinstance(result, FitResult)
    assert metrics.accuracy(predict_proba(model, val), val.tensors[1]) > 0.85
    assert result.early_stopping and result.n_train == 1400 and result.n_val == 397
    assert result.history[result.best_epoch - 1]["val_loss"] == result.best_val_loss
    assert set(result.history[0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "seconds"}


def test_early_stopping_restores_best_weights(digits, caplog):
    train, val = digits
    model = _mlp()
    # 60 samples, a wide net and a large step size: validation loss soon stops improving.
    with caplog.at_level(logging.INFO, logger="al_lib.training"):
        result = fit(model, Subset(train, range(60)), val_set=val, max_epochs=60, patience=1, lr=2e-2, **FAST)
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 1 < 60
    assert result.best_val_loss == min(h["val_loss"] for h in result.history)
    assert _val_loss(model, val) == pytest.approx(result.best_val_loss, rel=1e-5)
    assert not model.training
    assert f"stopped early at epoch {result.epochs_run}" in caplog.text
    assert f"best epoch {result.best_epoch}" in result.message
    # Per-epoch loss in the log (INFO): one line per epoch run, with the numbers of the history.
    first = result.history[0]
    assert f"epoch 1/60: train_loss {first['train_loss']:.4f}, val_loss {first['val_loss']:.4f}" in caplog.text
    assert caplog.text.count("/60: train_loss") == result.epochs_run


def test_same_seed_same_weights_and_global_rng_untouched(digits):
    train, _ = digits
    subset = Subset(train, range(300))
    before = torch.get_rng_state()
    # No val_set: the held-out split, the shuffling and the dropout masks all come from the seed.
    models = [_cnn(), _cnn(), _cnn()]
    for model, seed in zip(models, (1, 1, 2)):
        fit(model, subset, max_epochs=2, seed=seed, **FAST)
    assert torch.equal(torch.get_rng_state(), before)
    assert _same_weights(models[0], models[1])
    assert not _same_weights(models[0], models[2])


def test_mc_layers_train_on_the_forked_seeded_global_rng(digits):
    """Patched (consistent) MC layers have no pass generator in training: they draw, like nn.Dropout,
    from fit's seeded fork of the global RNG."""
    from al_lib.bayesian import patch_module, stochastic_modules

    train, _ = digits
    subset = Subset(train, range(300))
    before = torch.get_rng_state()
    models = [patch_module(_mlp(hidden=32), consistent=True) for _ in range(3)]
    for model, seed in zip(models, (4, 4, 5)):
        fit(model, subset, max_epochs=2, seed=seed, **FAST)
    assert torch.equal(torch.get_rng_state(), before)
    assert _same_weights(models[0], models[1]) and not _same_weights(models[0], models[2])
    assert all(m.generator is None for m in stochastic_modules(models[0]))


def test_initial_state_resets_weights(digits):
    train, _ = digits
    subset = Subset(train, range(200))
    fresh, used = _mlp(hidden=32), _mlp(hidden=32)
    initial = snapshot_state(fresh)
    fit(used, subset, max_epochs=2, **FAST)  # weights now differ from the initial ones
    assert not _same_weights(fresh, used)
    fit(fresh, subset, max_epochs=2, **FAST)
    fit(used, subset, max_epochs=2, initial_state=initial, **FAST)
    assert _same_weights(fresh, used)


def test_snapshot_state_is_a_cpu_deep_copy():
    model = _mlp(hidden=8)
    snap = snapshot_state(model)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    assert not torch.equal(snap["1.weight"], model[1].weight)
    assert all(t.device.type == "cpu" for t in snap.values())


def test_progress_false_prints_nothing(digits, capfd):
    train, _ = digits
    root_handlers = list(logging.getLogger().handlers)
    fit(_mlp(hidden=16), Subset(train, range(100)), max_epochs=2, **FAST)
    assert capfd.readouterr() == ("", "")
    fit(_mlp(hidden=16), Subset(train, range(100)), max_epochs=2, progress=True, device="cpu")
    assert "fit" in capfd.readouterr().err
    assert logging.getLogger().handlers == root_handlers


def test_binary_single_logit_model(digits):
    train, val = digits
    binary = [TensorDataset(d.tensors[0], (d.tensors[1] == 0).long()) for d in (train, val)]
    model = _mlp(hidden=16, out=1)
    result = fit(model, binary[0], val_set=binary[1], max_epochs=5, lr=1e-2, **FAST)
    probs = predict_proba(model, binary[1])
    assert probs.shape == (len(binary[1]), 1)
    assert metrics.accuracy(probs, binary[1].tensors[1]) > 0.95
    assert result.history[-1]["val_accuracy"] > 0.9


# 5 or 95 samples at 0.2 would validate on 1 or 19 samples: too noisy to stop on (< 20).
@pytest.mark.parametrize("n, val_fraction", [(5, 0.2), (95, 0.2), (50, 0.0)])
def test_no_validation_trains_fixed_epochs(digits, n, val_fraction, caplog):
    train, _ = digits
    with caplog.at_level(logging.INFO, logger="al_lib.training"):
        result = fit(_mlp(hidden=8), Subset(train, range(n)), val_fraction=val_fraction, max_epochs=4, **FAST)
    assert not result.early_stopping and not result.stopped_early
    assert result.epochs_run == result.best_epoch == 4
    assert result.best_val_loss is None and result.n_val == 0
    assert all(h["val_loss"] is None for h in result.history)
    assert "no early stopping" in caplog.text


def test_held_out_split_sizes(digits):
    train, _ = digits
    result = fit(_mlp(hidden=8), Subset(train, range(100)), val_fraction=0.25, max_epochs=1, **FAST)
    assert (result.n_train, result.n_val) == (75, 25)
    assert fit(_mlp(hidden=8), Subset(train, range(100)), val_fraction=0.2, max_epochs=1, **FAST).n_val == 20


def test_callback_can_stop_and_sees_records(digits):
    train, val = digits
    seen = []

    def stop_at_two(record, model):
        seen.append(record["epoch"])
        return record["epoch"] == 2

    result = fit(_mlp(hidden=8), Subset(train, range(100)), val_set=val, max_epochs=10, patience=None,
                 callbacks=[stop_at_two], **FAST)
    assert seen == [1, 2] and result.epochs_run == 2 and result.stopped_early
    assert "callback" in result.message


def test_sgd_custom_loss_and_batchnorm_with_single_sample_last_batch(digits):
    train, _ = digits
    calls = []

    def loss(outputs, targets):
        calls.append(len(targets))
        return nn.functional.cross_entropy(outputs, targets)

    model = build_model("vgg", (1, 8, 8), 10, widths=(4,), hidden=8, seed=0)
    # 9 samples of batch size 4: the last batch of 1 is dropped (BatchNorm cannot train on it).
    fit(model, Subset(train, range(9)), max_epochs=1, batch_size=4, optimizer="sgd", loss=loss, **FAST)
    assert calls == [4, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"patience": 0}, "patience"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_samples_per_epoch": -1}, "min_samples_per_epoch"),
    ],
)
def test_bad_arguments(digits, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(_mlp(hidden=8), Subset(digits[0], range(20)), **FAST, **kwargs)


def test_empty_train_set():
    with pytest.raises(ValueError, match="empty"):
        fit(_mlp(hidden=8), TensorDataset(torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)), **FAST)


def test_predict_proba_inputs_only_and_mode_restored(digits):
    _, val = digits
    model = _mlp(hidden=8).train()
    inputs_only = TensorDataset(val.tensors[0])
    probs = predict_proba(model, inputs_only, batch_size=50, device="cpu")
    assert probs.shape == (len(val), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs, predict_proba(model, val, device="cpu"))
    assert model.training


def test_to_dict_is_plain(digits):
    result = fit(_mlp(hidden=8), Subset(digits[0], range(30)), max_epochs=1, **FAST)
    assert result.to_dict()["epochs_run"] == 1


def test_augment_applies_to_training_items_only_and_is_seeded(digits):
    train, _ = digits
    data = Subset(train, range(100))
    seen = []

    def augment(x):
        seen.append(x.shape)
        return x + 0.1 * torch.randn_like(x)  # global RNG: fit runs it in its seeded fork

    runs = []
    for _ in range(2):
        seen.clear()
        model = _cnn()
        result = fit(model, data, max_epochs=2, patience=None, batch_size=32, val_fraction=0.2, seed=4,
                     augment=augment, **FAST)
        assert result.n_val == 20 and len(seen) == 2 * 80  # every training item, each epoch; never validation
        runs.append(snapshot_state(model))
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    plain = _cnn()
    fit(plain, data, max_epochs=2, patience=None, batch_size=32, val_fraction=0.2, seed=4, **FAST)
    assert not torch.equal(plain.state_dict()["classifier.1.weight"], runs[0]["classifier.1.weight"])


def test_min_samples_per_epoch_draws_fixed_length_epochs_of_repeated_passes(digits):
    train, _ = digits
    seen = []

    class Recording(torch.utils.data.Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            seen.append(i)
            return train[i]

    # 30 samples, 100 per epoch: passes 1-3 whole, the fourth cut short; 3 epochs.
    result = fit(_mlp(hidden=8), Recording(30), val_fraction=0, max_epochs=3, min_samples_per_epoch=100,
                 batch_size=16, **FAST)
    assert result.epochs_run == 3 and len(seen) == 300 and result.samples_per_epoch == 100
    assert result.message.endswith("(epochs of 100 samples drawn from 30)")
    for epoch in range(3):
        counts = np.bincount(seen[epoch * 100:(epoch + 1) * 100], minlength=30)
        assert sorted(set(counts)) == [3, 4]  # every sample 3 or 4 times per epoch
        assert sorted(seen[epoch * 100:epoch * 100 + 30]) == list(range(30))  # a whole pass first
    # A training set at least that large: one ordinary pass per epoch.
    seen.clear()
    result = fit(_mlp(hidden=8), Recording(120), val_fraction=0, max_epochs=2, min_samples_per_epoch=100, **FAST)
    assert len(seen) == 240 and sorted(seen[:120]) == list(range(120))
    assert result.samples_per_epoch == 120 and "drawn from" not in result.message


def test_min_samples_per_epoch_is_seeded_and_trains_a_few_labels_better(digits):
    train, val = digits
    few = Subset(train, range(30))
    x, y = val.tensors
    runs = {}
    for name, per_epoch, seed, epochs in (("pass", 0, 3, 4), ("fixed", 320, 3, 4), ("fixed again", 320, 3, 4),
                                          ("other seed", 320, 4, 1), ("first epoch", 320, 3, 1)):
        model = _mlp(hidden=64)
        fit(model, few, val_fraction=0, max_epochs=epochs, min_samples_per_epoch=per_epoch, batch_size=32,
            lr=1e-2, seed=seed, **FAST)
        runs[name] = (model, metrics.accuracy(predict_proba(model, val), y))
    assert _same_weights(runs["fixed"][0], runs["fixed again"][0])
    assert not _same_weights(runs["first epoch"][0], runs["other seed"][0])  # the seed decides the draw
    # 4 one-step epochs barely move a fresh net; 4 epochs of 320 samples (40 steps) fit the 30 labels.
    assert runs["fixed"][1] > runs["pass"][1] + 0.3, (runs["fixed"][1], runs["pass"][1])
    assert runs["fixed"][1] > 0.6


def test_min_samples_per_epoch_validates_each_fixed_length_epoch(digits):
    train, val = digits
    result = fit(_mlp(hidden=16), Subset(train, range(40)), val_set=val, max_epochs=4, patience=None,
                 min_samples_per_epoch=200, **FAST)
    assert result.n_train == 40 and result.n_val == len(val)  # a given val_set takes no training labels
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and result.early_stopping



def _ensemble(hidden=32):
    return Ensemble([_mlp(seed, hidden=hidden) for seed in (1, 2, 3)])


def test_fit_members_trains_each_member_on_its_own_on_one_shared_split(digits):
    """Brute force: member m = fit(a copy of member m, the rest, val_set=the split, seed=the m-th seed
    drawn after the split), and the split is fit_validation_split's (the calibrator's)."""
    train, _ = digits
    subset = Subset(train, range(300))
    ensemble = _ensemble()
    copies = [copy.deepcopy(m) for m in ensemble.members]
    results = fit_members(ensemble, subset, seed=7, max_epochs=3, **FAST)

    generator = torch_generator(7)  # fit's split: a seeded permutation, the first 20 % held out
    order = torch.randperm(300, generator=generator).tolist()
    rest, val = Subset(subset, order[60:]), Subset(subset, order[:60])
    assert fit_validation_split(subset, seed=7)[0].indices == val.indices
    for m, member in enumerate(copies):
        expected = fit(member, rest, val_set=val, seed=draw_seed(generator), max_epochs=3, **FAST)
        assert _same_weights(member, ensemble.members[m]), m
        assert (results[m].n_train, results[m].n_val) == (240, 60)
        assert results[m].best_val_loss == pytest.approx(expected.best_val_loss)
    assert len(results) == 3 and not _same_weights(ensemble.members[0], ensemble.members[1])
    assert not ensemble.training and not any(m.training for m in ensemble.members)


def test_fit_members_without_a_split_trains_every_member_on_everything(digits):
    train, _ = digits
    results = fit_members(_ensemble(), Subset(train, range(50)), val_fraction=0.2, max_epochs=2, **FAST)
    assert [(r.n_train, r.n_val, r.early_stopping) for r in results] == [(50, 0, False)] * 3
    assert all("would hold 10 (< 20)" in r.message for r in results)


def test_fit_members_of_one_network_is_fit(digits):
    train, _ = digits
    subset = Subset(train, range(200))
    a, b = _mlp(hidden=32), _mlp(hidden=32)
    (result,) = fit_members(a, subset, seed=3, max_epochs=2, **FAST)
    assert result.best_val_loss == fit(b, subset, seed=3, max_epochs=2, **FAST).best_val_loss
    assert _same_weights(a, b)


def test_fit_members_initial_state_resets_each_member(digits):
    train, _ = digits
    subset = Subset(train, range(200))
    fresh, used = _ensemble(), _ensemble()
    initial = snapshot_state(fresh)
    fit_members(used, subset, max_epochs=2, **FAST)
    fit_members(fresh, subset, max_epochs=2, **FAST)
    fit_members(used, subset, max_epochs=2, initial_state=initial, **FAST)
    assert _same_weights(fresh, used)
    with pytest.raises(ValueError, match=r"no 'members.0.\*' weights"):
        fit_members(used, subset, max_epochs=1, initial_state=snapshot_state(_mlp(hidden=32)), **FAST)


def test_fit_refuses_an_ensemble(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="fit_members"):
        fit(_ensemble(), train, max_epochs=1, **FAST)


def test_fit_summary_is_the_best_epoch_of_one_fit_and_the_member_mean_of_an_ensemble(digits):
    train, _ = digits
    subset = Subset(train, range(300))
    (single,) = fit_members(_mlp(hidden=32), subset, seed=1, max_epochs=4, patience=1, **FAST)
    best = single.history[single.best_epoch - 1]
    assert fit_summary([single]) == {"epochs": single.epochs_run, "best_epoch": single.best_epoch,
                                     "train_loss": best["train_loss"], "val_loss": best["val_loss"],
                                     "val_accuracy": best["val_accuracy"]}
    assert best["val_loss"] == pytest.approx(single.best_val_loss)

    results = fit_members(_ensemble(), subset, seed=1, max_epochs=4, patience=1, **FAST)
    rows = [fit_summary([r]) for r in results]
    summary = fit_summary(results)
    assert set(summary) == set(rows[0])
    for key in summary:
        assert summary[key] == pytest.approx(sum(row[key] for row in rows) / 3), key

    (plain,) = fit_members(_mlp(hidden=32), subset, val_fraction=0.0, max_epochs=2, **FAST)
    assert set(fit_summary([plain])) == {"epochs", "best_epoch", "train_loss"}
    with pytest.raises(ValueError, match="no network"):
        fit_summary([])
