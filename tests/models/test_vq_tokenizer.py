"""Residual-VQ action tokenizer (``vq``): round trip within a stated error, token layout, coarse-to-fine
levels, malformed sequences, state and checkpoint round trips, the fit-tokenizer CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_action_tokenizers import SMALL_VQ, D, H, smooth_chunks

from vla.models.heads.tokenizers import (
    ActionTokenizerConfig,
    VQTokenizer,
    VQTokenizerConfig,
    load_tokenizer,
    tokenizer_from_state,
)
from vla.registry import lookup


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_registry_lists_vq():
    assert {"bins", "fast", "vq"} <= set(ActionTokenizerConfig.get_known_choices())
    tok = lookup(ActionTokenizerConfig, "vq")(levels=3, codes=32).build()
    assert isinstance(tok, VQTokenizer) and tok.vocab_size == 96 and not tok.is_fitted


def test_round_trip_within_stated_error(vq):
    """Held-out smooth chunks come back within 0.085 mean abs error (measured 0.066, worst chunk 0.13).

    Broken quantizers fail it: one that always picks code 0 gives 0.39, one whose levels all quantize
    the latent instead of the residual 0.100; a quantizer collapsed onto one code per level gives
    about the best constant chunk's 0.25, over twice the bound."""
    train, held_out = smooth_chunks(400, seed=0), smooth_chunks(100, seed=7)
    report = vq.report(held_out)
    constant = np.abs(held_out - train.mean(0)).mean()
    assert report["reconstruction_mae"] < 0.085, report
    assert report["max_chunk_mae"] < 0.25, report
    assert report["reconstruction_mae"] < constant / 2, (report, constant)
    assert report["mean_tokens_per_chunk"] == report["max_tokens_per_chunk"] == H // 4 * 4


def test_levels_refine_coarse_to_fine(vq):
    """Each residual level lowers the error: decoding with only the first k levels gets worse as k drops
    (measured 0.134, 0.088, 0.072, 0.066 for k = 1..4)."""
    held_out = smooth_chunks(100, seed=7)
    windows = held_out.reshape(-1, 4 * D)  # (N * H/W, W*D)
    codes = vq.encode_windows(windows)  # (N * H/W, L)
    errors = []
    for k in range(1, 5):
        kept = np.where(np.arange(4)[None] < k, codes, -1)  # -1: the level adds nothing
        errors.append(np.abs(vq.decode_codes(kept) - windows).mean())
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors


def test_token_layout_one_range_per_level(vq):
    ids = vq.encode(smooth_chunks(1, seed=3)[0])
    assert len(ids) == vq.tokens_per_chunk(H) == 16
    for i, token in enumerate(ids):  # window-major; level l = i % L owns ids [l*K, (l+1)*K)
        level = i % 4
        assert level * 64 <= token < (level + 1) * 64, (i, token)


def test_horizon_must_be_a_multiple_of_the_window(vq):
    with pytest.raises(ValueError, match=r"H=15 is not a multiple of the window W=4"):
        VQTokenizerConfig(**SMALL_VQ).build().fit(smooth_chunks(10, seed=0, horizon=15))
    with pytest.raises(ValueError, match=r"H=15 is not a multiple of the window W=4"):
        vq.encode(smooth_chunks(1, seed=0, horizon=15)[0])
    with pytest.raises(ValueError, match=r"H=6 is not a multiple of the window W=4"):
        vq.decode([], 6, D)
    with pytest.raises(ValueError, match=r"fitted on action_dim D=4, asked for D=3"):
        vq.decode([], H, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        VQTokenizer().encode(np.zeros((10, D)))
    with pytest.raises(ValueError, match="codes must be >= 1"):
        VQTokenizerConfig(codes=0)


def test_state_round_trip_gives_identical_tokens(vq, tmp_path):
    path = vq.save(tmp_path)
    assert json.loads(path.read_text())["type"] == "vq"
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, VQTokenizer)
    assert loaded.state_dict() == vq.state_dict()
    assert tokenizer_from_state(vq.state_dict()).state_dict() == vq.state_dict()
    for chunk in smooth_chunks(20, seed=5):
        ids = vq.encode(chunk)
        assert loaded.encode(chunk) == ids
        np.testing.assert_array_equal(loaded.decode(ids, H, D), vq.decode(ids, H, D))


def test_fit_is_seeded_and_leaves_the_global_rng_alone():
    chunks = smooth_chunks(50, seed=1)
    tiny = {"window": 4, "levels": 2, "codes": 8, "hidden": 16, "fit_steps": 30}
    torch.manual_seed(0)
    first = VQTokenizerConfig(**tiny).build().fit(chunks)
    after_fit = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after_fit)  # fitting drew from its own generator
    assert VQTokenizerConfig(**tiny).build().fit(chunks).state_dict() == first.state_dict()
    assert VQTokenizerConfig(**tiny, seed=1).build().fit(chunks).state_dict() != first.state_dict()


def test_vq_head_checkpoint_round_trip(tmp_path):
    """The fitted tokenizer travels inside a policy checkpoint: the loaded policy decodes the same chunk."""
    from vla.models.backbones.base import BackboneConfig
    from vla.models.heads import VQHeadConfig
    from vla.models.policy import Policy, PolicyConfig

    stats = {
        "state": {"mean": [0.0] * 4, "std": [1.0] * 4},
        "actions": {"mean": [0.0] * 3, "std": [1.0] * 3, "q01": [-1.0] * 3, "q99": [1.0] * 3},
    }
    head = VQHeadConfig(tokenizer=VQTokenizerConfig(window=3, levels=2, codes=8, hidden=16, fit_steps=30))
    torch.manual_seed(0)
    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=head,
        chunk_size=6,
        n_action_steps=3,
        cameras=["image"],
        state_dim=4,
        action_dim=3,
    )
    policy = Policy(cfg, stats).eval()
    assert policy.head.max_tokens == 6 // 3 * 2 + 1  # the chunk's tokens and the end token
    policy.head.fit_tokenizer(smooth_chunks(40, seed=2, horizon=6, dims=3), normalization="quantile")
    g = torch.Generator().manual_seed(1)
    obs = {
        "images": torch.randint(0, 255, (2, 1, 3, 48, 48), dtype=torch.uint8, generator=g),
        "state": torch.randn(2, 4, generator=g),
        "instruction": ["open the drawer", "push the button"],
    }
    expected = policy.predict_chunk(obs)
    loaded = Policy.load(policy.save(tmp_path / "ckpt"))
    assert loaded.head.tokenizer.state_dict() == policy.head.tokenizer.state_dict()
    assert torch.equal(loaded.predict_chunk(obs), expected)
    # a tokenizer saved on its own is used by a head built from its path; a mismatched chunk is refused
    policy.head.save_tokenizer(tmp_path / "tok")
    with pytest.raises(ValueError, match=r"H=4 is not a multiple of the window W=3"):
        VQHeadConfig(tokenizer_path=str(tmp_path / "tok")).build(policy.backbone, 4, 3)
    with pytest.raises(ValueError, match=r"fitted on action_dim D=3, asked for D=5"):
        VQHeadConfig(tokenizer_path=str(tmp_path / "tok")).build(policy.backbone, 6, 5)


def test_cli_fit_tokenizer_vq(metaworld_layout_dataset, copy_dataset, tmp_path, capsys):
    from vla.cli.data import main

    root = copy_dataset(metaworld_layout_dataset)
    out_dir = tmp_path / "tok"
    args = ["fit-tokenizer", str(root), "--out", str(out_dir), "--type", "vq", "--chunk", "8", "--window", "4"]
    assert main([*args, "--levels", "2", "--codes", "16", "--fit-steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "fitted on 44 chunks of H=8, D=4 (quantile normalized): vq tokenizer" in out
    assert "mean tokens per chunk: 4.00 (max 4)" in out and "vocab size: 32" in out
    mae = float(out.split("reconstruction MAE: ")[1].split()[0])
    assert 0 < mae < 0.5  # random-walk test actions in [-1, 1]; a finite, real reconstruction
    tok = load_tokenizer(out_dir)
    assert isinstance(tok, VQTokenizer) and tok.normalization == "quantile" and tok.config.levels == 2
    # a chunk the window does not divide is refused before any data is read, naming both sizes
    assert main([*args[:-1], "3"]) == 2
    assert "H=8 is not a multiple of the window W=3" in capsys.readouterr().err


@pytest.mark.slow
def test_vla_train_fits_the_vq_tokenizer_and_checkpoints_it(metaworld_layout_dataset, tmp_path):
    """`vla train` with the vq head and no tokenizer_path fits the tokenizer on the dataset's chunks,
    trains, and writes a checkpoint that loads with the same tokenizer."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tiny_policies import TINY

    from vla.models.policy import Policy

    out = tmp_path / "run"
    args = [
        "train",
        f"--dataset.root={metaworld_layout_dataset}",
        "--policy.head.type=vq",
        "--policy.head.tokenizer.window=2",
        "--policy.head.tokenizer.codes=16",
        "--policy.head.tokenizer.fit_steps=200",
        "--train.steps=20",
        "--train.batch_size=4",
        f"--output_dir={out}",
        *TINY,  # chunk 4: two windows of 2 steps, 4 levels: 8 tokens
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-m", "vla", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "'mean_tokens_per_chunk': 8.0" in r.stdout  # the trainer's fit report: 2 windows x 4 levels
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 20 and all(np.isfinite(x["loss"]) for x in rows)  # learning: test_heads' contract test
    ckpt = out / "checkpoints" / "last"
    policy = Policy.load(ckpt)
    assert load_tokenizer(ckpt / "head").state_dict() == policy.head.tokenizer.state_dict()
    assert policy.head.tokenizer.is_fitted and policy.head.max_tokens == 9  # 8 codes and the end token
