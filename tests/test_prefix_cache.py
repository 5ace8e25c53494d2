import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from al_lib import prefix_cache
from al_lib.bayesian import Ensemble, MCDropConnect, patch_module
from al_lib.inference import iter_predict_mc, predict_mc
from al_lib.models import GalCNN, VGGNet
from al_lib.prefix_cache import find_split, plan_split


def seeded(factory, **patch):
    torch.manual_seed(0)
    return patch_module(factory(), **patch)


def gal(**patch):
    return seeded(lambda: GalCNN((1, 12, 12), 5, channels=6, kernel_size=3, hidden=16), **patch)


def vgg(**patch):
    return seeded(lambda: VGGNet((3, 8, 8), 4, widths=(6, 8), convs_per_block=1, hidden=12), **patch)


class ResidualBeforeDropout(nn.Module):
    """Not a Sequential: a residual block, then dropout."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.conv(h))
        return self.head(torch.flatten(self.drop(h), 1))


class ResidualAcrossDropout(ResidualBeforeDropout):
    """The skip joins after the dropout: the cut must move back to the skip's source."""

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(torch.flatten(self.drop(self.conv(h)) + h, 1))


class InputReused(ResidualBeforeDropout):
    def forward(self, x):
        return self.head(torch.flatten(self.drop(self.stem(x)), 1)) + x.mean()


class FunctionalDropout(ResidualBeforeDropout):
    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(torch.flatten(F.dropout(h, 0.4, training=True), 1))


class Untraceable(ResidualBeforeDropout):
    def forward(self, x):
        h = self.stem(x)
        if h.sum() > 0:  # data-dependent control flow: fx cannot trace it
            h = torch.relu(h)
        return self.head(torch.flatten(self.drop(h), 1))


class SequenceFirst(nn.Module):
    """Its intermediate is [S, B, E]: tiling that along dim 0 would tile the wrong axis."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(6, 3)

    def forward(self, x):  # x [B, S, 4]
        h = self.embed(x).transpose(0, 1)  # [S, B, E]
        return self.head(self.drop(h).mean(0))


class Noise(nn.Module):
    """A custom stochastic layer that is no MC class: found by tracing its forward."""

    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


class Scale(nn.Module):
    def forward(self, x):
        return 2 * x


def both_engines(model, x, **kwargs):
    kwargs = {"iterations": 5, "batch_size": 4, "progress": False, "seed": 0, **kwargs}
    return (predict_mc(model, x, engine="prefix", **kwargs), predict_mc(model, x, engine="full", **kwargs))


def assert_same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factory", [gal, vgg], ids=["GalCNN", "VGGNet"])
def test_prefix_cached_equals_full_mc_with_consistent_masks(factory):
    model = factory(consistent=True)
    x = torch.randn(10, *((1, 12, 12) if factory is gal else (3, 8, 8)))
    prefix, full = both_engines(model, x)
    assert_same(prefix, full)
    assert np.abs(prefix[..., 0] - prefix[..., 1]).max() > 1e-4  # the T samples do differ
    split = find_split(model.eval())
    assert split.how == "fx" and split.prefix is not None
    # Everything up to the first dropout is cached, BatchNorm (eval) included.
    assert not any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in split.tail.modules())


def test_per_element_dropout_gives_the_same_numbers_for_the_same_seed():
    """The prefix draws no random numbers, so a seeded run draws the same masks either way."""
    model = gal()
    prefix, full = both_engines(model, torch.randn(9, 1, 12, 12), seed=3)
    assert_same(prefix, full)


@pytest.mark.parametrize("cls", [ResidualBeforeDropout, ResidualAcrossDropout, FunctionalDropout])
def test_fx_split_of_non_sequential_models(cls):
    model = seeded(cls, consistent=True)
    x = torch.randn(7, 1, 6, 6)
    prefix, full = both_engines(model, x, seed=1)
    assert_same(prefix, full)
    split = find_split(model.eval())
    assert split.how == "fx"
    tail_convs = [m for m in split.tail.modules() if isinstance(m, nn.Conv2d)]
    assert tail_convs == ([model.conv] if cls is ResidualAcrossDropout else [])


def test_sequential_models_split_in_module_order():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), Scale()),
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), Noise(), nn.Linear(8, 3)),
    )
    split = find_split(model.eval())
    assert split.how == "sequential"
    assert [type(m) for m in split.tail] == [Noise, nn.Linear]
    x = torch.randn(6, 1, 6, 6)
    prefix, full = both_engines(model, x, seed=2)
    assert_same(prefix, full)


def test_user_split_by_name_and_by_pair():
    model = vgg(consistent=True)
    x = torch.randn(6, 3, 8, 8)
    full = predict_mc(model, x, iterations=4, engine="full", seed=5, progress=False)
    by_name = predict_mc(model, x, iterations=4, split="features", engine="prefix", seed=5, progress=False)
    tail = nn.Sequential(model.avgpool, nn.Flatten(), model.classifier)
    by_pair = predict_mc(model, x, iterations=4, split=(model.features, tail), seed=5, progress=False)
    assert_same(by_name, full)
    assert_same(by_pair, full)


def test_user_split_errors():
    model = gal().eval()
    with pytest.raises(ValueError, match="not deterministic"):
        find_split(model, "features")  # ends with a dropout
    assert find_split(model, "features.4").prefix is not None
    with pytest.raises(ValueError, match="no such submodule"):
        find_split(model, "nope")
    with pytest.raises(ValueError, match="stochastic layer"):
        find_split(model, (model.features, model.classifier))
    with pytest.raises(ValueError, match="engine='full'"):
        plan_split(model, engine="full", split="features.4")


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: gal(dropout=False, dropconnect=0.2), "first stochastic node"),
        (lambda: seeded(lambda: nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 3))), "first layer"),
        (lambda: seeded(InputReused), "input"),
        (lambda: seeded(Untraceable), "torch.fx cannot trace"),
        (lambda: Ensemble([nn.Linear(4, 3), nn.Linear(4, 3)]), "stochastic as a whole"),
    ],
    ids=["dropconnect-first", "dropout-first", "input-reused", "untraceable", "ensemble"],
)
def test_no_prefix_falls_back_to_full_mc_and_says_why(make, reason, caplog):
    model = make().eval()
    with caplog.at_level(logging.INFO, logger="al_lib.prefix_cache"):
        split = find_split(model)
    assert split.prefix is None and split.tail is model
    assert reason in split.reason and reason in caplog.text
    with pytest.raises(ValueError, match="no deterministic prefix"):
        plan_split(model, engine="prefix")


def test_fallback_results_equal_full_mc():
    model = seeded(Untraceable)
    x = torch.randn(5, 1, 6, 6)
    auto = predict_mc(model, x, iterations=3, seed=4, progress=False)
    full = predict_mc(model, x, iterations=3, seed=4, engine="full", progress=False)
    np.testing.assert_array_equal(auto, full)


def test_ensemble_tail_behind_a_shared_backbone():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
    model = nn.Sequential(backbone, Ensemble([nn.Linear(8, 3) for _ in range(3)]))
    x = torch.randn(7, 5)
    prefix, full = both_engines(model, x, iterations=3)
    assert_same(prefix, full)
    for t, member in enumerate(model[1].members):
        expected = torch.softmax(member(backbone(x)), 1).detach().numpy()
        np.testing.assert_allclose(prefix[..., t], expected, rtol=1e-5, atol=1e-6)


def test_batch_not_in_dim_0_is_detected_at_run_time():
    model = seeded(SequenceFirst)
    x = torch.randn(4, 4, 4)  # B == S: the shapes alone cannot tell
    auto = predict_mc(model, x, iterations=3, seed=0, progress=False)
    full = predict_mc(model, x, iterations=3, seed=0, engine="full", progress=False)
    assert_same(auto, full)
    assert find_split(model.eval()).prefix is None  # remembered
    model = seeded(SequenceFirst)
    with pytest.raises(ValueError, match="batch is not dim 0"):
        predict_mc(model, x, iterations=3, engine="prefix", progress=False)


def test_split_analysis_is_cached_and_invalidated_by_structure_changes(monkeypatch):
    traces = []
    real = prefix_cache._trace
    monkeypatch.setattr(prefix_cache, "_trace", lambda *a, **k: traces.append(1) or real(*a, **k))
    model = seeded(ResidualBeforeDropout, consistent=True)
    x = torch.randn(3, 1, 6, 6)
    for _ in range(3):
        predict_mc(model, x, iterations=2, progress=False)
    assert len(traces) == 1
    model.conv = nn.Conv2d(4, 4, 3, padding=1)
    predict_mc(model, x, iterations=2, progress=False)
    assert len(traces) == 2
    assert find_split(model.eval()).tail is not None


def test_max_rows_caps_every_tail_pass_and_keeps_results():
    model = gal(consistent=True)
    x = torch.randn(10, 1, 12, 12)
    rows = []
    model.classifier[1].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    reference = predict_mc(model, x, iterations=6, batch_size=10, max_rows=None, seed=1, progress=False)
    rows.clear()
    capped = predict_mc(model, x, iterations=6, batch_size=10, max_rows=20, seed=1, progress=False)
    assert_same(capped, reference)
    assert max(rows) <= 20 and sum(rows) == 60
    # T > max_rows keeps whole MC samples for MC-aware layers (consistent masks): 1 sample x T rows.
    rows.clear()
    assert_same(predict_mc(model, x, iterations=6, batch_size=10, max_rows=4, seed=1, progress=False), reference)
    assert set(rows) == {6}


def test_max_rows_cuts_t_when_nothing_in_the_tail_is_mc_aware():
    model = gal()
    rows = []
    model.classifier[1].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    probs = predict_mc(model, torch.randn(3, 1, 12, 12), iterations=7, max_rows=3, seed=0, progress=False)
    assert probs.shape == (3, 5, 7) and max(rows) == 3
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_amp_runs_the_forward_in_bfloat16_and_returns_float32():
    model = gal(consistent=True)
    seen = []
    model.classifier[-1].register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    x = torch.randn(6, 1, 12, 12)
    exact = predict_mc(model, x, iterations=3, seed=2, progress=False)
    assert seen == [torch.float32]  # amp=None: off on the CPU
    low = predict_mc(model, x, iterations=3, amp=True, seed=2, progress=False)
    assert seen[-1] == torch.bfloat16 and low.dtype == np.float32
    np.testing.assert_allclose(low, exact, atol=3e-2)


@pytest.mark.parametrize("where", ["", "classifier"])
def test_hooks_on_traced_through_modules_force_the_full_engine(where):
    """A split calls leaf layers, not the model or its containers: their hooks would not run."""
    model = gal(consistent=True).eval()
    calls = []
    model.get_submodule(where).register_forward_hook(lambda *a: calls.append(1))
    assert "hooks" in plan_split(model).reason
    predict_mc(model, torch.randn(2, 1, 12, 12), iterations=2, progress=False)
    assert calls == [1]


def test_hooks_on_leaf_layers_do_not_prevent_a_split():
    model = gal(consistent=True).eval()
    model.classifier[1].register_forward_hook(lambda *a: None)
    assert plan_split(model).prefix is not None


def test_modes_of_each_submodule_are_restored():
    model = vgg(consistent=True)
    model.train()
    model.features.eval()  # e.g. a frozen backbone
    predict_mc(model, torch.randn(2, 3, 8, 8), iterations=2, progress=False)
    assert model.training and model.classifier.training and not model.features.training


def test_streaming_generator_closes_cleanly_when_abandoned():
    model = gal(consistent=True)
    gen = iter_predict_mc(model.train(), torch.randn(8, 1, 12, 12), iterations=2, batch_size=2, progress=False)
    next(gen)
    gen.close()
    assert model.training
    assert all(m.mc_iterations is None for m in model.modules() if hasattr(m, "mc_iterations"))


def test_dropconnect_layers_are_stochastic_leaves():
    model = gal(dropout=False, dropconnect=0.2).eval()
    assert isinstance(model.features[0], MCDropConnect)
    probs = predict_mc(model, torch.randn(3, 1, 12, 12), iterations=4, progress=False)
    assert np.abs(probs[..., 0] - probs[..., 1]).max() > 1e-4
