"""The memory of one pi0-scale training step at batch 8: a regression here costs users a smaller batch.

The bound is LeRobot's own pi0 on the same inputs (2 cameras at 224 px, chunk 50, bf16 weights, fused AdamW):
46.9 GiB at batch 8 on an H100 (../shared/peers/README.md, `scripts/peers/lerobot_bench.py`). Ours must not
need more. When a GPU run records our own figure, tighten the bound to it plus 10% and say so here.
"""

from __future__ import annotations

from vla.bench.model import ModelBenchConfig, bench_train

LEROBOT_PI0_BATCH8_GIB = 46.9


def test_pi0_scale_training_step_fits_in_lerobots_memory(cuda):
    (row,) = bench_train(ModelBenchConfig(scale="pi0", batch_sizes=[8], steps=1, warmup=1, device="cuda"))
    assert not row.get("oom"), row
    assert row["params_b"] > 3.0, row  # PaliGemma-3B and the Gemma-300M expert, at full size
    assert row["peak_mem_gb"] <= LEROBOT_PI0_BATCH8_GIB, row
