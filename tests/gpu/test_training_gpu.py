"""bf16 training on CUDA through `vla train`, every registered head, and DeepSpeed ZeRO-2/3 on a real device."""

from __future__ import annotations

import math
import statistics
import sys

import pytest
import torch
from gpu_runs import REPO, TINY_TRAINING, metrics, run_vla, tiny_observation

import vla.models.heads  # noqa: F401  (registers every head)
from vla.models.heads.base import HeadConfig
from vla.utils.net import free_port

HEADS = sorted(HeadConfig.get_known_choices())
# A head's own arguments for the tiny chunk of 4 steps (vq: the default 5-step window does not divide it)
HEAD_ARGS = {"vq": ["--policy.head.tokenizer.window=2", "--policy.head.tokenizer.fit_steps=300"]}


def loss_fell(losses: list[float], factor: float = 0.8) -> bool:
    return statistics.mean(losses[-5:]) < factor * statistics.mean(losses[:5])


@pytest.mark.parametrize("head", HEADS)
def test_bf16_training_on_cuda_learns(head, metaworld_layout_dataset, tmp_path):
    """40 bf16 steps on the GPU: every loss finite, the last five well below the first five, and the
    checkpoint predicts finite chunks on the GPU."""
    out = tmp_path / "run"
    run_vla(
        [
            "train",
            f"--dataset.root={metaworld_layout_dataset}",
            f"--policy.head.type={head}",
            "--train.steps=40",
            "--train.batch_size=8",
            "--train.mixed_precision=bf16",
            f"--output_dir={out}",
            *TINY_TRAINING,
            *HEAD_ARGS.get(head, []),
        ]
    )
    rows = metrics(out)
    losses = [r["loss"] for r in rows]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses), losses
    assert loss_fell(losses), losses
    assert rows[-1]["peak_mem_gb"] is not None and rows[-1]["peak_mem_gb"] > 0, "the run did not use the GPU"

    from vla.models.policy import Policy

    policy = Policy.load(out / "checkpoints" / "last", device="cuda")
    chunk = policy.predict_chunk(tiny_observation(2))
    assert chunk.shape == (2, 4, 4) and chunk.is_cuda and torch.isfinite(chunk).all()


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_one_gpu_trains_and_exports(stage, metaworld_layout_dataset, tmp_path):
    """`accelerate launch` with our ZeRO config on one GPU (the command the README gives, one process):
    finite losses, ZeRO shards saved, and `vla export --from-zero` consolidates a checkpoint that loads."""
    out = tmp_path / f"zero{stage}"
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / f"configs/accelerate/zero{stage}.yaml"),
        "--num_processes",
        "1",
        "--main_process_port",  # the tests run 4 at a time on the GPU machine
        str(free_port()),
        "-m",
    ]
    run_vla(
        [
            "train",
            f"--dataset.root={metaworld_layout_dataset}",
            "--policy.head.type=flow",
            "--train.steps=4",
            "--train.batch_size=4",
            "--train.mixed_precision=bf16",
            f"--output_dir={out}",
            *TINY_TRAINING,
        ],
        launcher=launcher,
    )
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    ckpt = out / "checkpoints" / "last"
    assert any((ckpt / "training_state").rglob("*optim_states.pt")), "no ZeRO optimizer shards saved"

    exported = tmp_path / "exported"
    run_vla(["export", str(ckpt), "--out", str(exported), "--from-zero"])
    from vla.models.policy import Policy

    policy = Policy.load(exported, device="cuda")
    chunk = policy.predict_chunk(tiny_observation(1))
    assert chunk.shape == (1, 4, 4) and torch.isfinite(chunk).all()
