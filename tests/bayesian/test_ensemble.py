import numpy as np
import pytest
import torch
from torch import nn

from al_lib.bayesian import Ensemble
from al_lib.inference import predict_mc


def members(n=3):
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(nn.Linear(5, 4))
    return out


def test_each_member_is_one_mc_sample():
    ms = members()
    x = torch.randn(9, 5)
    probs = predict_mc(Ensemble(ms), x, iterations=3, batch_size=4, progress=False)
    assert probs.shape == (9, 4, 3)
    for t, m in enumerate(ms):
        np.testing.assert_allclose(probs[..., t], torch.softmax(m(x), 1).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_plain_call_is_log_mean_probability():
    ms = members()
    x = torch.randn(6, 5)
    expected = torch.stack([torch.softmax(m(x), 1) for m in ms]).mean(0)
    torch.testing.assert_close(torch.softmax(Ensemble(ms)(x), 1), expected)


def test_wrong_iteration_count_is_refused():
    with pytest.raises(ValueError, match="pass iterations=3"):
        predict_mc(Ensemble(members()), torch.randn(2, 5), iterations=20, progress=False)


def test_from_checkpoints_round_trip_and_errors(tmp_path):
    ms = members(2)
    paths = []
    for i, m in enumerate(ms):
        paths.append(tmp_path / f"m{i}.pt")
        torch.save(m.state_dict(), paths[-1])
    ens = Ensemble.from_checkpoints(lambda: nn.Linear(5, 4), paths)
    for a, b in zip(ens.members, ms):
        torch.testing.assert_close(a.weight, b.weight)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Ensemble.from_checkpoints(lambda: nn.Linear(5, 4), [tmp_path / "missing.pt"])
    with pytest.raises(ValueError, match="m0.pt"):
        Ensemble.from_checkpoints(lambda: nn.Linear(5, 3), paths)
