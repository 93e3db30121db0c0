"""`vla bench` pieces that run without a GPU: the model benchmarks' rows and the LeRobot peer runner."""

from __future__ import annotations

import json

import pytest
import torch

from vla.bench.model import ModelBenchConfig, bench_infer, bench_train
from vla.bench.peer import PEER_SCRIPT, parse_rows, run_peer
from vla.cli.bench import markdown_table


def test_model_benchmarks_report_their_figures():
    cfg = ModelBenchConfig(
        scale="tiny", head="regression", batch_sizes=[2], steps=2, warmup=1, infer_iters=2, chunk=4, image_size=32
    )
    (train,) = bench_train(cfg)
    assert train["what"] == "train_step" and train["batch"] == 2 and train["samples_per_s"] > 0
    infer = bench_infer(cfg)
    assert infer["what"] == "infer_chunk_b1" and 0 < infer["p50_ms"] <= infer["p90_ms"]
    table = markdown_table({"train": [train], "infer": infer})
    assert "samples_per_s=" in table and "p50_ms=" in table


def test_peer_rows_are_parsed_from_the_scripts_output():
    # the line shapes scripts/peers/lerobot_bench.py prints (figures from its H100 run)
    rows = [
        {"what": "build", "seconds": 41.2},
        {"peer": "lerobot-pi0", "what": "train_step", "batch": 16, "samples_per_s": 30.3, "peak_mem_gb": 72.2},
        {"peer": "lerobot-pi0", "what": "infer_chunk_b1", "steps": 10, "chunk": 50, "p50_ms": 255.0},
    ]
    text = "Loading weights...\n" + "\n".join(json.dumps(r) for r in rows) + "\n{not json\n[1, 2]\n"
    assert parse_rows(text) == rows
    assert PEER_SCRIPT.is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_peer_needs_a_gpu_and_a_known_name():
    with pytest.raises(ValueError, match="known peers"):
        run_peer("openpi-pi0", batch_sizes=[8])
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        run_peer("lerobot-pi0", batch_sizes=[8])


@pytest.mark.parametrize("scale", ["pi0", "pi05", "smolvla"])
def test_full_scales_are_lerobots_architectures(scale):
    """`vla bench --scale pi0` builds pi0 itself (its recipe's options), at full size (on the meta device)."""
    from vla.bench.model import ModelBenchConfig, scale_config
    from vla.interop.lerobot import lerobot_type
    from vla.models.policy import Policy

    pcfg = scale_config(ModelBenchConfig(scale=scale), torch.float32)
    assert lerobot_type(pcfg) == scale
    pcfg.backbone.init_device = "meta"  # the 3B VLM without memory; the expert is built for real
    policy = Policy(pcfg)
    width, layers = (720, 16) if scale == "smolvla" else (1024, 18)
    assert policy.head.width == width and len(policy.head.expert.layers) == layers
    expert = sum(p.numel() for p in policy.head.expert.parameters())
    # LeRobot's experts, counted from their dimensions (lm_head excluded):
    # pi0, Gemma-300M: 18 x (q 1024x2048 + k, v 1024x256 + o 2048x1024 + GeGLU 3x1024x4096 + 2 norms) + norm;
    # pi0.5: every norm a dense 1024 -> 3x1024 with bias; SmolVLA: 16 layers at width 720 (15 heads, 5 KV heads
    # of 64, FFN 2048), the 8 cross layers' k/v projecting 320 -> 320.
    per_layer = 2 * 1024 * 2048 + 2 * 1024 * 256 + 3 * 1024 * 4096
    adaptive = 1024 * 3072 + 3072
    smol = 2 * 720 * 960 + 3 * 720 * 2048 + 2 * 720
    expected = {
        "pi0": 18 * (per_layer + 2 * 1024) + 1024,
        "pi05": 18 * (per_layer + 2 * adaptive) + adaptive,
        "smolvla": 8 * (smol + 2 * 720 * 320) + 8 * (smol + 2 * 320 * 320) + 720,
    }
    assert expert == expected[scale], (expert, expected[scale])


def test_head_options_reach_the_head_config_typed_and_checked():
    """`vla bench infer --head bins --head-option decoding=diffusion --head-option diffusion_steps=4`."""
    from vla.bench.model import scale_config
    from vla.cli.bench import _head_options

    options = _head_options(["decoding=diffusion", "diffusion_steps=4"])
    head = scale_config(ModelBenchConfig(head="bins", head_options=options), torch.float32).head
    assert (head.type, head.decoding, head.diffusion_steps) == ("bins", "diffusion", 4)
    with pytest.raises(ValueError, match="--head-option decodng: the bins head has no such option"):
        scale_config(ModelBenchConfig(head="bins", head_options={"decodng": "diffusion"}), torch.float32)
    with pytest.raises(ValueError, match="not supported by the fast head"):  # the config's own check runs
        scale_config(ModelBenchConfig(head="fast", head_options={"decoding": "diffusion"}), torch.float32)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _head_options(["decoding"])
    # a dotted key reaches a nested config (Mixture of Horizons), typed
    moh = ModelBenchConfig(head="regression", head_options={"moh.horizons": "[5,10]", "moh.consensus": "true"})
    head = scale_config(moh, torch.float32).head
    assert head.moh.horizons == [5, 10] and head.moh.consensus is True
    with pytest.raises(ValueError, match="--head-option moh.horizon: moh has no such option"):
        scale_config(ModelBenchConfig(head="regression", head_options={"moh.horizon": "[5]"}), torch.float32)


@pytest.mark.sim
def test_eval_benchmark_compares_equal_work():
    """`vla bench eval`: the naive loop and the runner play the same episodes to the same length (the bench
    policy plays the zero action, which never succeeds), and steps per second are reported beside episodes."""
    from eval.bench import bench_eval

    res = bench_eval("mw-easy", num_envs=2, episodes_per_task=2, tasks="0", max_steps=12, n_action_steps=4)
    assert res["equal_work"] and res["naive"]["steps"] == 2 * 12
    for loop in ("naive", "runner_1env", "runner_2env"):
        assert res[loop]["env_steps_per_s"] > 0 and res[loop]["episodes_per_min"] > 0
    assert res["speedup_2env_vs_naive"] > 0


@pytest.mark.parametrize("head", ["fast", "vq"])
def test_token_heads_that_learn_their_vocabulary_are_benchmarked(head):
    """FAST and VQ are fitted on the benchmark's own chunks before timing (they refused to run unfitted)."""
    cfg = ModelBenchConfig(
        scale="tiny", head=head, batch_sizes=[2], steps=1, warmup=1, infer_iters=1, chunk=10, image_size=32
    )
    (train,) = bench_train(cfg)
    assert train["head"] == head and train["samples_per_s"] > 0
    assert bench_infer(cfg)["p50_ms"] > 0
