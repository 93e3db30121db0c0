"""DeepSpeed ZeRO-2/3 through accelerate, on the CPU.

DeepSpeed's CPU accelerator runs ZeRO-2 and ZeRO-3 here: in one process, that covers our
DeepSpeed configs, the trainer's DeepSpeed branch (batch sizes, gathered weights), ZeRO
checkpoints, exact resume from them and `vla export --from-zero`; in two processes over gloo
(`accelerate launch` with the shipped configs/accelerate/zeroN.yaml, the trainer naming the
gloo backend when there is no GPU), ZeRO-2 and ZeRO-3 at batch 2 x 2 processes train like
one process at batch 4: the partitioned optimizer (and, for ZeRO-3, weights) and the gradient
reduction across ranks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "--policy.backbone.preset=tiny-smolvlm",
    "--policy.chunk_size=4",
    "--policy.n_action_steps=2",
    "--train.batch_size=2",
    "--train.num_workers=0",
    "--train.log_every=1",
    "--augment.enabled=false",
]


def run_ds(
    stage: int,
    dataset: Path,
    out: Path,
    *extra: str,
    port: int,
    head: str = "flow",
    config: Path | None = None,
    check: bool = True,
    processes: int = 1,
) -> subprocess.CompletedProcess:
    """One process with the environment `accelerate launch` would give it, or several through
    `accelerate launch` itself and configs/accelerate/zero{stage}.yaml (the README's command)."""
    config = config or REPO / f"configs/deepspeed/zero{stage}.json"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if processes == 1:
        env.update(
            ACCELERATE_USE_DEEPSPEED="true",
            ACCELERATE_DEEPSPEED_CONFIG_FILE=str(config),
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        launcher = [sys.executable, "-m"]
    else:
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / f"configs/accelerate/zero{stage}.yaml"),
            "--deepspeed_config_file",
            str(config),
            f"--num_processes={processes}",
            f"--main_process_port={port}",
            "-m",
        ]
    cmd = [
        *launcher,
        "vla",
        "train",
        f"--dataset.root={dataset}",
        f"--output_dir={out}",
        f"--policy.head.type={head}",
        *ARGS,
        *extra,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 or not check, r.stderr[-4000:]
    return r


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [row["loss"] for row in rows(out)]


@pytest.mark.slow
def test_zero2_trains_resumes_exactly_and_exports(metaworld_layout_dataset, tmp_path):
    full = tmp_path / "full"
    run_ds(2, metaworld_layout_dataset, full, "--train.steps=6", "--train.save_every=3", port=29611)
    ckpt = full / "checkpoints" / "last"
    assert any((ckpt / "training_state").rglob("*optim_states.pt")), "no ZeRO optimizer shards saved"

    part = tmp_path / "part"  # warmup (100 steps) > 6: the learning rate does not depend on the total
    run_ds(2, metaworld_layout_dataset, part, "--train.steps=3", port=29612)
    run_ds(2, metaworld_layout_dataset, part, "--train.steps=6", "--resume=true", port=29613)
    assert losses(part) == pytest.approx(losses(full), rel=1e-5)

    exported = tmp_path / "exported"
    r = subprocess.run(
        [sys.executable, "-m", "vla", "export", str(ckpt), "--out", str(exported), "--from-zero"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(str(ckpt / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b if k in a) and len(b) > 50


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "port"), [(2, 29621), (3, 29623)])
def test_two_processes_match_one_process(stage, port, metaworld_layout_dataset, tmp_path):
    """ZeRO at batch 2 x 2 CPU processes (gloo) follows one process at batch 4: the same losses and
    learning rates, the same final weights. Without the trainer's gloo backend accelerate counts one
    process of rank 0 in each, and DeepSpeed refuses train_batch_size 2 != 2 x 1 x 2 processes."""
    config = None
    if stage == 3:  # partition every tensor: with the shipped threshold, a tiny model's weights would all stay whole
        config = json.loads((REPO / "configs/deepspeed/zero3.json").read_text())
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        (tmp_path / "zero3.json").write_text(json.dumps(config))
        config = tmp_path / "zero3.json"
    common = ["--train.steps=4", "--optim.warmup_steps=2", "--optim.lr=1e-3"]  # weights that move
    one, two = tmp_path / "one", tmp_path / "two"
    run_ds(stage, metaworld_layout_dataset, one, *common, "--train.batch_size=4", port=port, config=config)
    run_ds(stage, metaworld_layout_dataset, two, *common, port=port + 1, config=config, processes=2)

    shards = sorted(p.name for p in (two / "checkpoints" / "last" / "training_state").rglob("*optim_states.pt"))
    assert [name.split("_mp_")[0] for name in shards] == ["zero_pp_rank_0", "zero_pp_rank_1"], shards  # one per rank
    # Identical up to float reduction order (gloo's all-reduce against one process's sum).
    assert len(rows(two)) == 4
    for ra, rb in zip(rows(one), rows(two), strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4), (ra, rb)
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-6)
    a = load_file(str(one / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(two / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and len(a) > 50
    # Adam moves a weight by up to lr = 1e-3 a step; the two runs differ by about 1e-5 at most.
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst


@pytest.mark.slow
@pytest.mark.parametrize("head", ["flow", "bins", "flow-gemma"])
def test_zero3_trains_and_consolidates(head, metaworld_layout_dataset, tmp_path):
    """Parameters used inside their module's forward (flow) and read outside it: the LM-head rows a
    token head reads, and the LM head's shape when the head picks its action ids, which under
    ZeRO-3 init is an empty shard. DeepSpeed gathers a parameter read outside its module's forward
    when it is read inside the engine's forward; this pins that too. ``flow-gemma``: pi0.5's expert
    (transformers' Gemma layers, adaptive norms), whose layers run their submodules themselves."""
    # Partition every tensor: with the shipped threshold, a tiny model's weights would all stay whole.
    config = json.loads((REPO / "configs/deepspeed/zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "zero3.json").write_text(json.dumps(config))
    out = tmp_path / "z3"
    port = {"flow": 29614, "bins": 29616, "flow-gemma": 29618}[head]
    extra = (
        ["--policy.head.expert.type=gemma", "--policy.head.time_conditioning=adaptive"] if head == "flow-gemma" else []
    )
    head = head.split("-")[0]
    run_ds(
        3,
        metaworld_layout_dataset,
        out,
        "--train.steps=3",
        *extra,
        port=port,
        head=head,
        config=tmp_path / "zero3.json",
    )
    assert len(losses(out)) == 3 and all(math.isfinite(x) for x in losses(out))
    from vla.models.policy import Policy

    policy = Policy.load(out / "checkpoints" / "last")  # gathered from the ZeRO-3 partitions
    chunk = policy.predict_chunk(
        {"images": torch.rand(1, 2, 3, 32, 32), "state": torch.randn(1, 4), "instruction": ["reach"]}
    )
    assert chunk.shape == (1, 4, 4) and torch.isfinite(chunk).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "option, port",
    [
        (["--train.ema_decay=0.99"], 29617),  # an EMA of the local weight shards would be empty
        (["--train.eval_every=1", "--train.eval_suite=mw-easy"], 29618),  # ranks' evaluations would wait on each other
    ],
    ids=["ema", "periodic-eval"],
)
def test_zero3_refuses_what_needs_whole_weights_on_one_rank(option, port, metaworld_layout_dataset, tmp_path):
    r = run_ds(3, metaworld_layout_dataset, tmp_path / "run", "--train.steps=1", *option, port=port, check=False)
    assert r.returncode != 0 and f"{option[0].split('=')[0][2:]} with DeepSpeed ZeRO-3" in r.stderr
