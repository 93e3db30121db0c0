"""The trainer on CPU: single process, 2-process gloo DDP, kill + exact resume, fine-tuning onto a new robot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_policies import TINY, TINY_MODEL

REPO = Path(__file__).resolve().parents[2]


def run_vla(args: list[str], launcher: list[str] | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = (launcher or [sys.executable, "-m"]) + ["vla", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kw)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_single_process_training_writes_contract_outputs(metaworld_layout_dataset, tmp_path):
    out = tmp_path / "run"
    r = run_vla(
        [
            "train",
            f"--dataset.root={metaworld_layout_dataset}",
            "--policy.head.type=regression",
            "--train.steps=25",
            "--train.batch_size=4",
            f"--output_dir={out}",
            *TINY,
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 26))
    assert all({"step", "loss", "lr", "samples_per_s"} <= set(r) for r in rows)
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    assert "training plan:" in r.stdout
    assert (out / "loss_curve.png").stat().st_size > 1000
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 25

    from vla.models.policy import Policy

    policy = Policy.load(out / "checkpoints" / "last")
    assert policy.config.image_size == 32  # the dataset's cameras: evaluation renders at this size
    obs = {"images": torch.rand(2, 2, 3, 32, 32), "state": torch.randn(2, 4), "instruction": ["reach", "reach"]}
    assert policy.predict_chunk(obs).shape == (2, 4, 4)


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_checkpoint_loads_offline_after_its_pretrained_dir_is_gone(metaworld_layout_dataset, tmp_path, serve_and_infer):
    """A backbone from a local ``pretrained=`` directory; the directory is deleted after two training
    steps, and the checkpoint still loads (model config and processor saved inside it) and serves."""
    import shutil

    import numpy as np

    from vla.models.backbones import BackboneConfig

    vlm = tmp_path / "my_vlm"
    BackboneConfig.get_choice_class("smolvlm")(preset="tiny").build(state_dim=4, num_cameras=2).save_pretrained(vlm)
    out = tmp_path / "run"
    args = ["train", f"--dataset.root={metaworld_layout_dataset}", "--train.steps=2", "--train.batch_size=2"]
    r = run_vla(
        [*args, f"--output_dir={out}", *TINY, "--policy.backbone.preset=tiny", f"--policy.backbone.pretrained={vlm}"]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.rmtree(vlm)
    ckpt = out / "checkpoints" / "last"
    assert (ckpt / "backbone" / "config.json").is_file() and list((ckpt / "backbone").glob("tokenizer*"))
    rng = np.random.default_rng(0)
    obs = {
        "observation.images.image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=4).astype(np.float32),
        "prompt": "reach the goal",
    }
    actions = serve_and_infer(ckpt, obs)
    assert actions.shape == (4, 4) and np.isfinite(actions).all()


def test_auxiliary_target_trains_from_the_cli_and_its_checkpoint_predicts_without_it(
    metaworld_env_state_dataset, tmp_path
):
    """--policy.auxiliary.key: aux_loss logged beside a total that includes it; the checkpoint plays from
    images, instruction and proprioception alone, and its report of inputs names the training-only target."""
    out = tmp_path / "run"
    args = [f"--dataset.root={metaworld_env_state_dataset}", "--policy.head.type=regression", "--train.steps=3"]
    aux = ["--policy.auxiliary.key=observation.environment_state", "--policy.auxiliary.weight=2.0"]
    r = run_vla(["train", *args, *aux, "--train.batch_size=2", f"--output_dir={out}", *TINY])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = metrics(out)
    assert all("aux_loss" in row and 0 < row["aux_loss"] < float("inf") for row in rows)
    assert rows[0]["loss"] > 2.0 * rows[0]["aux_loss"]  # the total includes weight x aux_loss (and the actions')
    assert "training-only auxiliary target: observation.environment_state (39 dims, weight 2" in r.stdout

    from vla.models.policy import Policy

    policy = Policy.load(out / "checkpoints" / "last")
    assert policy.config.auxiliary.dim == 39 and policy.config.state_key == "observation.state"
    obs = {"images": torch.rand(2, 2, 3, 32, 32), "state": torch.randn(2, 4), "instruction": ["reach", "reach"]}
    chunk = policy.predict_chunk(obs)
    assert chunk.shape == (2, 4, 4) and torch.isfinite(chunk).all()
    assert "training only: auxiliary target `observation.environment_state`" in policy.config.inputs_description()


def test_bad_inputs_give_named_errors(tmp_path):
    r = run_vla(["train", f"--dataset.root={tmp_path / 'nope'}", f"--output_dir={tmp_path / 'o'}"])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run_vla(["train", "--train.stpes=3"])
    assert r.returncode == 2 and "stpes" in r.stderr
    r = run_vla(["train", "--policy.head.type=flwo"])
    assert r.returncode == 2 and "flwo" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("head", "port"), [("regression", 29533), ("flow", 29534), ("diffusion", 29535)])
def test_two_process_ddp_matches_single_process(metaworld_layout_dataset, tmp_path, head, port):
    """gloo DDP at batch 2 x 2 processes follows the same loss curve as 1 process at batch 4, and as
    1 process at batch 2 accumulating 2 micro-steps, with the default augmentation on: each sample's
    augmentation, noise and time depend on (seed, step, sample index), not on the rank that draws them."""
    common = [
        "train",
        f"--dataset.root={metaworld_layout_dataset}",
        f"--policy.head.type={head}",
        "--train.steps=4",
        *TINY_MODEL,  # augmentation on: the default
    ]
    runs = {
        "single": ([*common, "--train.batch_size=4"], None),
        "accum": ([*common, "--train.batch_size=2", "--train.grad_accum=2"], None),
        # accelerate's own launcher runs one process on CPU; torchrun starts two and accelerate picks gloo.
        "ddp": (
            [*common, "--train.batch_size=2"],
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m"],
        ),
    }
    curves = {}
    for name, (args, launcher) in runs.items():
        r = run_vla([*args, f"--output_dir={tmp_path / name}"], launcher=launcher)
        assert r.returncode == 0, r.stderr[-3000:]
        curves[name] = metrics(tmp_path / name)
        assert len(curves[name]) == 4
    # Identical up to float reduction order: the loss is a plain mean over samples (see masked_mean).
    for other in ("accum", "ddp"):
        for ra, rb in zip(curves["single"], curves[other], strict=True):
            assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4), (other, ra, rb)
            assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-6)


def test_kill_and_resume_reproduces_uninterrupted_run(metaworld_layout_dataset, tmp_path, kill_at_checkpoint):
    common = [
        "train",
        f"--dataset.root={metaworld_layout_dataset}",
        "--policy.head.type=flow",
        "--train.steps=30",
        "--train.batch_size=2",
        "--train.save_every=4",
        *TINY_MODEL,  # augmentation on: its draws, like the noise and time, resume exactly
    ]
    full = tmp_path / "full"
    r = run_vla([*common, f"--output_dir={full}"])
    assert r.returncode == 0, r.stderr[-3000:]

    crashed = tmp_path / "crashed"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "vla", *common, f"--output_dir={crashed}"]
    kill_at_checkpoint(cmd, crashed / "checkpoints" / "step_0000008", env, REPO, crashed / "summary.json")
    r = run_vla([*common, f"--output_dir={crashed}", "--resume=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = metrics(full), metrics(crashed)
    assert [x["step"] for x in b] == list(range(1, 31))
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5, abs=1e-7), (ra, rb)
    # No partial checkpoint is left looking complete.
    assert not list((crashed / "checkpoints").glob("step_*/.partial"))
    assert all((p / "trainer_state.json").exists() for p in (crashed / "checkpoints").glob("step_*"))
    # The weights are stored once, as the checkpoint's model.safetensors, not again in the training state.
    assert not list((crashed / "checkpoints" / "last" / "training_state").glob("model*"))


def test_finetune_onto_new_robot(metaworld_layout_dataset, three_cam_dataset, tmp_path):
    base = tmp_path / "base"
    r = run_vla(
        [
            "train",
            f"--dataset.root={metaworld_layout_dataset}",
            "--policy.head.type=flow",
            "--train.steps=3",
            "--train.batch_size=2",
            f"--output_dir={base}",
            *TINY,
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ft = tmp_path / "ft"
    r = run_vla(
        [
            "train",
            f"--dataset.root={three_cam_dataset}",
            f"--init-from={base / 'checkpoints' / 'last'}",
            "--train.steps=3",
            "--train.batch_size=2",
            f"--output_dir={ft}",
            *TINY,
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "re-initialized" in r.stdout and "loaded from" in r.stdout
    plan = r.stdout[r.stdout.index("re-initialized") :].splitlines()[0]
    assert "state_proj" in plan or "state" in plan  # the 4 -> 7 dim state projection is new
    assert "action_in" in plan and "action_out" in plan  # 4 -> 14 dim action projections are new

    from safetensors.torch import load_file

    from vla.models.policy import Policy

    policy = Policy.load(ft / "checkpoints" / "last")
    assert policy.config.action_dim == 14 and len(policy.config.cameras) == 3
    before = load_file(str(base / "checkpoints" / "last" / "model.safetensors"))
    # A shape-independent backbone tensor was carried over from the base checkpoint before fine-tuning began.
    key = next(k for k in before if k.startswith("backbone.") and "layers.0" in k and k.endswith("q_proj.weight"))
    assert key in dict(policy.named_parameters()) or key in policy.state_dict()
    stats = json.loads((ft / "checkpoints" / "last" / "stats.json").read_text())
    assert len(stats["actions"]["mean"]) == 14


def train_with_eval(dataset: Path, out: Path, *extra: str, launcher: list[str] | None = None):
    """Two regression steps at batch 2, then one mw-easy evaluation (one episode per task)."""
    args = [
        "train",
        f"--dataset.root={dataset}",
        "--policy.head.type=regression",
        "--train.steps=2",
        "--train.batch_size=2",
        f"--output_dir={out}",
        "--train.eval_every=2",
        "--train.eval_suite=mw-easy",
        "--train.eval_episodes_per_task=1",
        *extra,
        *TINY,
    ]
    return run_vla(args, launcher=launcher)


def test_periodic_simulation_eval_and_tensorboard(metaworld_layout_dataset, tmp_path):
    """The MetaWorld-layout dataset has the suite's camera names (image, wrist) and 4-dim state/action."""
    out = tmp_path / "run"
    r = train_with_eval(metaworld_layout_dataset, out, "--train.eval_max_steps=6", "--tensorboard=true")
    assert r.returncode == 0, r.stderr[-3000:]
    evals = [row for row in metrics(out) if "eval_success" in row]
    assert len(evals) == 1 and evals[0]["step"] == 2 and 0.0 <= evals[0]["eval_success"] <= 1.0
    assert (out / "evals" / "step_0000002" / "results.json").exists()
    assert any((out / "tensorboard").iterdir())


@pytest.mark.sim
@pytest.mark.slow
def test_ddp_periodic_eval_shares_the_episodes_among_ranks(metaworld_layout_dataset, tmp_path):
    """Under 2-process gloo DDP each rank plays its own share of the evaluation episodes (none waits in
    a barrier while another plays them all) and rank 0 logs the success of all of them together."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m"]
    r = train_with_eval(metaworld_layout_dataset, out, "--train.eval_max_steps=4", launcher=launcher)
    assert r.returncode == 0, r.stderr[-3000:]
    step_dir = out / "evals" / "step_0000002"
    shares = []
    for rank in (0, 1):
        lines = (step_dir / f"shard_{rank}" / "episodes.jsonl").read_text().splitlines()
        shares.append({(json.loads(x)["task_index"], json.loads(x)["episode_index"]) for x in lines})
    assert all(shares) and not shares[0] & shares[1]  # both ranks played, never the same episode
    assert shares[0] | shares[1] == {(t, 0) for t in range(5)}  # together: every episode of mw-easy
    combined = json.loads((step_dir / "results.json").read_text())
    assert combined["overall"]["episodes"] == 5 and len(combined["tasks"]) == 5
    (logged,) = [row for row in metrics(out) if "eval_success" in row]
    assert logged["step"] == 2 and logged["eval_success"] == combined["average_success"]


def _tiny_in_process(dataset, out, *extra):
    from vla.config import parse_config
    from vla.train.config import TrainConfig

    args = [f"--dataset.root={dataset}", "--policy.head.type=regression", "--train.batch_size=2", f"--output_dir={out}"]
    return parse_config(TrainConfig, [*args, *TINY, *extra])


def test_a_full_disk_during_a_save_is_named_and_keeps_the_last_checkpoint(
    metaworld_layout_dataset, tmp_path, monkeypatch
):
    import errno

    from vla.models.policy import Policy
    from vla.train.trainer import run_training

    real, calls = Policy.write_checkpoint, []

    def write_checkpoint(self, directory, **kw):
        calls.append(directory)
        real(self, directory, **kw)
        if len(calls) == 2:  # the second save runs out of space after writing part of its files
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Policy, "write_checkpoint", write_checkpoint)
    out = tmp_path / "run"
    with pytest.raises(
        RuntimeError, match=r"checkpoint step_0000004 could not be written.*No space left.*step_0000002, is intact"
    ):
        run_training(_tiny_in_process(metaworld_layout_dataset, out, "--train.steps=4", "--train.save_every=2"))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last", "step_0000002"]  # no partial folder left
    monkeypatch.undo()
    assert Policy.load(ckpts / "last").config.chunk_size == 4


def test_a_torn_last_metrics_line_does_not_block_resume(metaworld_layout_dataset, tmp_path, caplog):
    from vla.train.trainer import run_training

    out = tmp_path / "run"
    run_training(_tiny_in_process(metaworld_layout_dataset, out, "--train.steps=4", "--train.save_every=2"))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.1')  # killed mid-write
    run_training(_tiny_in_process(metaworld_layout_dataset, out, "--train.steps=6", "--resume=true"))
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]
    assert any("metrics.jsonl" in r.getMessage() and "cut short" in r.getMessage() for r in caplog.records)
