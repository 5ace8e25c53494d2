"""The numpy path of the scorers works a chunk of rows at a time: same numbers, bounded memory."""

import sys
import tracemalloc

import numpy as np
import pytest
import torch

import al_lib.heuristics as H
from al_lib.heuristics import _arrays

SCORERS = ["bald", "entropy", "margin", "least_confidence", "variation_ratio", "mean_std"]


@pytest.mark.parametrize("name", SCORERS)
@pytest.mark.parametrize("shape", [(37, 4, 6), (23, 1, 5), (19, 3, 2, 3, 4)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "max", "none", lambda s: (s.reshape(len(s), -1) ** 2).sum(1)])
def test_chunked_equals_unchunked(monkeypatch, name, shape, reduction):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(max(shape[1], 2)), size=(shape[0], *shape[2:]))
    probs = np.moveaxis(probs, -1, 1)[:, : shape[1]].astype(np.float32)
    f = H.HEURISTICS[name]
    monkeypatch.setattr(_arrays, "CHUNK_BYTES", 10**12)
    whole = f(probs, reduction=reduction)
    monkeypatch.setattr(_arrays, "CHUNK_BYTES", 1)  # one row per chunk
    one_row = f(probs, reduction=reduction)
    monkeypatch.setattr(_arrays, "CHUNK_BYTES", 700)  # a few rows, ragged last chunk
    few_rows = f(probs, reduction=reduction)
    reference = f(torch.from_numpy(probs.astype(np.float64)), reduction=reduction)
    reference = reference.numpy() if isinstance(reference, torch.Tensor) else reference
    for got in (one_row, few_rows):
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_allclose(got, whole, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(whole, reference, rtol=1e-13, atol=1e-15)


def test_nan_in_a_later_chunk_is_reported(monkeypatch):
    monkeypatch.setattr(_arrays, "CHUNK_BYTES", 1)
    probs = np.full((10, 2, 3), 0.5)
    probs[7, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        H.bald(probs)
    with pytest.raises(ValueError, match="NaN"):
        H.random(probs, seed=0)


def test_empty_pool():
    for name in SCORERS:
        out = H.HEURISTICS[name](np.zeros((0, 3, 4), np.float32))
        assert out.shape == (0,) and out.dtype == np.float64


def test_random_unchanged_by_chunking(monkeypatch):
    probs = np.full((500, 2, 3, 4), 0.5, np.float32)
    a = H.random(probs, seed=3)
    monkeypatch.setattr(_arrays, "CHUNK_BYTES", 1)
    np.testing.assert_array_equal(a, H.random(probs, seed=3))
    np.testing.assert_array_equal(a, H.random(torch.from_numpy(probs).double(), seed=3).numpy())


@pytest.mark.parametrize("name", ["bald", "entropy", "variation_ratio"])
def test_numpy_scoring_memory_is_bounded(name):
    # 200k x 10 x 20 float32 = 160 MB; a whole-array float64 copy would be 320 MB.
    rng = np.random.default_rng(0)
    probs = rng.random((200_000, 10, 20), dtype=np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    output_bytes = probs.shape[0] * 8
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        scores = H.HEURISTICS[name](probs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scores.shape == (200_000,)
    assert peak - before - output_bytes < 0.25 * probs.nbytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss")
def test_numpy_scoring_peak_rss_is_bounded(tmp_path):
    # tracemalloc sees numpy's buffers but not torch's allocator: check the process peak too.
    import subprocess

    script = tmp_path / "peak.py"
    script.write_text(
        "import resource, numpy as np, al_lib.heuristics as H\n"
        "p = np.random.default_rng(0).random((200_000, 10, 20), dtype=np.float32)\n"
        "p /= p.sum(axis=1, keepdims=True)\n"
        "H.bald(p[:10])\n"  # warm up imports and allocator pools
        "maxrss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "rss = int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "before = max(rss, maxrss())\n"
        "H.bald(p)\n"
        "print(maxrss() - before, p.nbytes)\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    extra, nbytes = map(int, out.stdout.split())
    assert extra < 0.25 * nbytes, (extra, nbytes)
