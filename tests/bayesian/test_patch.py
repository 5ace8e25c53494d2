import warnings

import pytest
import torch
from torch import nn

from al_lib.bayesian import (
    ConsistentMCDropout,
    MCDropConnect,
    MCDropout,
    mc_dropout,
    patch_module,
    unpatch_module,
)


def make_model():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.Dropout2d(0.3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Sequential(nn.Linear(4 * 6 * 6, 16), nn.Dropout(0.5), nn.AlphaDropout(0.2)),
        nn.Linear(16, 3),
    )


def dropout_types(model):
    return [type(m) for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, MCDropout))]


def test_patch_replaces_every_dropout_kind_and_stays_stochastic_in_eval():
    model = make_model()
    patch_module(model)
    mc = [m for m in model.modules() if isinstance(m, MCDropout)]
    assert sorted(m.original_class.__name__ for m in mc) == ["AlphaDropout", "Dropout", "Dropout2d"]
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    torch.manual_seed(0)
    assert not torch.allclose(model(x), model(x))


def test_unpatch_restores_original_layers_and_determinism():
    model = make_model()
    before = [(type(m), getattr(m, "p", None)) for m in model.modules()]
    patch_module(model)
    unpatch_module(model)
    after = [(type(m), getattr(m, "p", None)) for m in model.modules()]
    assert before == after
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("cls,shape", [(nn.Dropout1d, (4, 3, 7)), (nn.Dropout3d, (2, 3, 4, 4, 4))])
def test_channel_dropouts_drop_whole_channels(cls, shape):
    layer = patch_module(nn.Sequential(cls(0.5)))
    out = layer(torch.ones(shape))
    per_channel = out.flatten(2)
    # Each channel is either all zeros or all 2.0 (inverted scaling).
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 2.0).all(-1))


def test_warns_when_nothing_is_patched():
    with pytest.warns(UserWarning, match="no layer to make stochastic"):
        patch_module(nn.Sequential(nn.Linear(3, 2)))


def test_not_inplace_leaves_model_untouched():
    model = make_model()
    patched = patch_module(model, inplace=False)
    assert not any(isinstance(m, MCDropout) for m in model.modules())
    assert any(isinstance(m, MCDropout) for m in patched.modules())


def test_context_manager_unpatches_even_on_error():
    model = make_model()
    with pytest.raises(RuntimeError):
        with mc_dropout(model) as m:
            assert any(isinstance(x, MCDropout) for x in m.modules())
            raise RuntimeError("boom")
    assert not any(isinstance(x, MCDropout) for x in model.modules())


def test_dropconnect_wraps_linear_and_conv_and_unwraps_to_the_same_layers():
    model = make_model()
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patch_module(model, dropout=False, dropconnect=0.3)
    wrapped = [m for m in model.modules() if isinstance(m, MCDropConnect)]
    assert [w.layer for w in wrapped] == linears
    model.eval()
    x = torch.randn(4, 1, 8, 8)
    assert not torch.allclose(model(x), model(x))
    unpatch_module(model)
    assert [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))] == linears


def test_dropconnect_rejects_bad_probability():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        patch_module(nn.Sequential(nn.Linear(2, 2)), dropout=False, dropconnect=1.0)


def test_consistent_patching_replaces_every_dropout_kind():
    model = patch_module(make_model(), consistent=True)
    layers = [m for m in model.modules() if isinstance(m, ConsistentMCDropout)]
    assert [m.original_class for m in layers] == [nn.Dropout2d, nn.Dropout, nn.AlphaDropout]
    unpatch_module(model)
    assert dropout_types(model) == [nn.Dropout2d, nn.Dropout, nn.AlphaDropout]


def test_patch_module_takes_no_mask_seed():
    """Masks come from each MC call's seed now; a patch-time seed would silently do nothing."""
    with pytest.raises(TypeError, match="seed"):
        patch_module(make_model(), consistent=True, seed=10)
