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
