"""Action tokenizers (bins, FAST, VQ): round trips, robustness to malformed ids, save/load. VQ's own tests are in
test_vq_tokenizer.py."""

from __future__ import annotations

import numpy as np
import pytest

from vla.models.heads.tokenizers import (
    ActionTokenizerConfig,
    BinsTokenizer,
    FastTokenizer,
    fit_fast_tokenizer,
    load_tokenizer,
    tokenizer_from_state,
)
from vla.registry import lookup

H, D = 16, 4


def smooth_chunks(n: int, seed: int, horizon: int = H, dims: int = D) -> np.ndarray:
    """(n, H, D) smooth trajectories in [-1, 1]: a sinusoid plus an offset per dim."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    amp = rng.uniform(-0.6, 0.6, (n, 1, dims))
    freq = rng.uniform(0.3, 1.5, (n, 1, dims))
    phase = rng.uniform(0.0, 6.0, (n, 1, dims))
    offset = rng.uniform(-0.3, 0.3, (n, 1, dims))
    return np.clip(amp * np.sin(2 * np.pi * freq * t + phase) + offset, -1.0, 1.0)


SMALL_VQ = {"window": 4, "levels": 4, "codes": 64, "hidden": 64, "fit_steps": 600}  # 4 windows x 4 levels: 16 tokens


@pytest.fixture(scope="module")
def fast() -> FastTokenizer:
    return fit_fast_tokenizer(smooth_chunks(400, seed=0), vocab_size=256, scale=10.0)


def test_registry_names():
    assert {"bins", "fast"} <= set(ActionTokenizerConfig.get_known_choices())
    assert isinstance(lookup(ActionTokenizerConfig, "bins")().build(), BinsTokenizer)
    with pytest.raises(KeyError, match="Did you mean 'fast'"):
        lookup(ActionTokenizerConfig, "fats")


def test_bins_round_trip_within_half_bin():
    tok = BinsTokenizer(256)
    x = np.random.default_rng(1).uniform(-1, 1, (H, D))
    ids = tok.encode(x)
    assert len(ids) == H * D and min(ids) >= 0 and max(ids) < 256
    err = np.abs(tok.decode(ids, H, D) - x).max()
    assert err <= tok.bin_width / 2 + 1e-7, err  # half a bin: 1/256
    # out-of-range values clip to the edge bins
    assert tok.encode(np.array([[-5.0, 5.0]])) == [0, 255]


def test_bins_step_major_order():
    tok = BinsTokenizer(4)  # bins over [-1, 1]: [-1,-.5) [-.5,0) [0,.5) [.5,1]
    chunk = np.array([[-0.9, 0.9], [-0.1, 0.1]])  # (H=2, D=2)
    assert tok.encode(chunk) == [0, 3, 1, 2]


def test_fast_round_trip_and_compression(fast):
    held_out = smooth_chunks(100, seed=7)
    report = fast.report(held_out)
    # scale 10 rounds each DCT coefficient to 0.05; measured MAE ~0.015
    assert report["reconstruction_mae"] < 0.03, report
    assert report["mean_tokens_per_chunk"] < H * D / 2, report  # measured ~15 of 64
    assert fast.vocab_size <= 256


def test_fast_scale_trades_precision_for_length():
    chunks = smooth_chunks(300, seed=3)
    coarse = fit_fast_tokenizer(chunks, vocab_size=512, scale=5.0).report(chunks)
    fine = fit_fast_tokenizer(chunks, vocab_size=512, scale=40.0).report(chunks)
    assert fine["reconstruction_mae"] < coarse["reconstruction_mae"] / 2
    assert fine["mean_tokens_per_chunk"] > coarse["mean_tokens_per_chunk"]


@pytest.mark.parametrize("kind", ["random", "out_of_range", "truncated", "empty", "long"])
@pytest.mark.parametrize("which", ["bins", "fast", "vq"])
def test_malformed_sequences_decode(kind, which, request):
    """Every tokenizer decodes anything a model may emit to a finite (H, D) chunk; extra tokens are dropped."""
    tok = BinsTokenizer(256) if which == "bins" else request.getfixturevalue(which)
    rng = np.random.default_rng(2)
    good = tok.encode(smooth_chunks(1, seed=9)[0])
    seqs = {
        "random": rng.integers(0, tok.vocab_size, 37).tolist(),
        "out_of_range": [-3, tok.vocab_size, 10**9, 5],
        "truncated": good[: len(good) // 2],
        "empty": [],
        "long": good * 20,
    }
    out = tok.decode(seqs[kind], H, D)
    assert out.shape == (H, D) and out.dtype == np.float32
    assert np.isfinite(out).all()
    if kind == "long" and which != "fast":  # fixed-length tokenizers drop the tokens past the chunk's
        np.testing.assert_array_equal(out, tok.decode(good, H, D))


def test_fast_truncation_degrades_gracefully(fast):
    chunk = smooth_chunks(1, seed=11)[0]
    ids = fast.encode(chunk)
    # dropping the last tokens only loses high frequencies: still close to the chunk
    assert np.abs(fast.decode(ids[:-1], H, D) - chunk).mean() < 0.2


def test_fast_errors_are_clear():
    with pytest.raises(RuntimeError, match="not fitted"):
        FastTokenizer().encode(np.zeros((H, D)))
    with pytest.raises(ValueError, match="vocab_size=8 is smaller"):
        fit_fast_tokenizer(smooth_chunks(50, seed=0), vocab_size=8, scale=10.0)
    with pytest.raises(ValueError, match=r"\(N, H, D\)"):
        fit_fast_tokenizer(np.zeros((H, D)))


@pytest.mark.parametrize("which", ["bins", "fast"])
def test_save_load_identical(which, fast, tmp_path):
    tok = fast if which == "fast" else BinsTokenizer(128)
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok)
    assert loaded.state_dict() == tok.state_dict()
    assert tokenizer_from_state(tok.state_dict()).state_dict() == tok.state_dict()
    for chunk in smooth_chunks(20, seed=5):
        ids = tok.encode(chunk)
        assert loaded.encode(chunk) == ids
        np.testing.assert_array_equal(loaded.decode(ids, H, D), tok.decode(ids, H, D))
