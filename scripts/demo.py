"""`make demo`: the main job end to end on the embedded default (MetaWorld mw-easy).

1. generate scripted demonstrations (LeRobot v3 dataset);
2. train a tiny VLA (configs/experiments/demo_cpu.yaml, or a bigger run with --gpu / a GPU present);
3. evaluate it on mw-easy, and the random policy beside it with the same episodes;
4. serve it with `vla serve` in a subprocess and check one request through the client;
5. write outputs/demo/report.md (success table with intervals, loss curve, a rollout video).

    python -m scripts.demo [--gpu] [--out outputs/demo] [--episodes-per-task 10] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def generate_data(out: Path, episodes_per_task: int, image_size: int) -> dict:
    """Reuse a complete dataset from an earlier run with the same settings; else generate it."""
    from data_pipelines.demos.metaworld import generate

    marker = out.parent / "data_settings.json"
    settings = {"suite": "mw-easy", "episodes_per_task": episodes_per_task, "image_size": image_size}
    if (out / "meta" / "info.json").exists() and marker.exists() and json.loads(marker.read_text()) == settings:
        print(f"reusing {out} (same settings as before)")
        return json.loads((out.parent / "data_report.json").read_text())
    report = generate("mw-easy", episodes_per_task, out, image_size=image_size, use_videos=False, overwrite=True)
    (out.parent / "data_report.json").write_text(json.dumps(report, indent=2, default=str))
    marker.write_text(json.dumps(settings))
    return report


def train_config(out: Path, data: Path, steps: int, batch_size: int, gpu: bool):
    """The demo's training recipe: configs/experiments/demo_cpu.yaml with the run's sizes."""
    from vla.config import parse_config
    from vla.train.config import TrainConfig

    args = [
        "--config",
        str(REPO / "configs/experiments/demo_cpu.yaml"),
        f"--dataset.root={data}",
        f"--output_dir={out}",
        f"--train.steps={steps}",
        f"--train.batch_size={batch_size}",
    ]
    if gpu:
        args += ["--train.mixed_precision=bf16"]  # the dataset is decoded into memory: no loader workers
    return parse_config(TrainConfig, args)


def train(out: Path, data: Path, steps: int, batch_size: int, gpu: bool) -> dict:
    from vla.train.trainer import run_training

    cfg = train_config(out, data, steps, batch_size, gpu)
    shutil.rmtree(out, ignore_errors=True)
    return run_training(cfg)


def evaluate(
    out: Path,
    checkpoint: Path | None,
    policy: str | None,
    episodes: int,
    num_envs: int,
    video_episodes: int,
    device: str,
) -> dict:
    from eval.runner import EvalConfig
    from eval.runner import evaluate as run_eval

    shutil.rmtree(out, ignore_errors=True)
    cfg = EvalConfig(
        suite="mw-easy",
        checkpoint=str(checkpoint) if checkpoint else None,
        policy=policy,
        episodes_per_task=episodes,
        num_envs=num_envs,
        video_episodes=video_episodes,
        out=str(out),
        device=device,
    )
    return run_eval(cfg)


def policy_inputs(checkpoint: Path) -> str:
    """What the trained policy reads, from its own saved config (not from the recipe)."""
    from vla.models.policy import Policy

    return Policy.load_config(checkpoint).inputs_description()


def observability(checkpoint: Path) -> dict[str, dict]:
    """Whether the trained policy's own cameras, at its training resolution, show what each task needs
    (eval/observability.py): a task they cannot show is reported as such, beside the plain average."""
    from eval.observability import task_verdicts
    from vla.models.policy import Policy

    cfg = Policy.load_config(checkpoint)
    return task_verdicts("mw-easy", list(cfg.cameras), cfg.image_size)


def serve_check(checkpoint: Path) -> dict:
    """Start `vla serve` in its own process, send one seeded request, compare with in-process inference."""
    import numpy as np
    import torch

    from vla.models.policy import Policy
    from vla.serve.client import PolicyClient
    from vla.utils.net import free_port

    port = free_port()
    log = checkpoint.parent.parent.parent / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vla",
                "serve",
                "--checkpoint",
                str(checkpoint),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        policy = Policy.load(checkpoint)
        rng = np.random.default_rng(0)
        h = w = 64
        obs = {
            f"observation.images.{cam}": rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for cam in policy.config.cameras
        }
        obs["observation.state"] = rng.normal(size=policy.config.state_dim).astype(np.float32)
        obs["prompt"] = "push the button down from the top"
        obs["seed"] = 0
        client = PolicyClient(f"ws://127.0.0.1:{port}", connect_timeout_s=120)
        t0 = time.perf_counter()
        reply = client.infer(obs)
        round_trip_ms = 1000 * (time.perf_counter() - t0)
        client.close()
        images = torch.stack(
            [torch.from_numpy(obs[f"observation.images.{c}"]).permute(2, 0, 1) for c in policy.config.cameras]
        )[None]
        local = policy.predict_chunk(
            {
                "images": images,
                "state": torch.from_numpy(obs["observation.state"])[None],
                "instruction": [obs["prompt"]],
            },
            seed=0,
        )[0].numpy()
        diff = float(np.abs(local - reply["actions"]).max())
        return {
            "port": port,
            "actions_shape": list(reply["actions"].shape),
            "round_trip_ms": round(round_trip_ms, 1),
            "max_abs_diff_vs_in_process": diff,
            "log": str(log),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def observable_summary(trained: dict, verdicts: dict[str, dict]) -> tuple[str, str]:
    """(one line for the terminal, a paragraph for the report): the average over the tasks the policy's
    cameras can show, and which tasks they cannot show and why."""
    from eval.observability import observable_average

    avg, left_out = observable_average({n: t["success_rate"] for n, t in trained["tasks"].items()}, verdicts)
    if not left_out:
        return "", "The policy's cameras show every task's objects and goal at its training resolution."
    seen = len(trained["tasks"]) - len(left_out)
    mean = f"{avg:.2f}" if avg is not None else "n/a"
    why = "; ".join(f"**{t}**: {verdicts[t]['verdict']} ({verdicts[t]['why']})" for t in left_out)
    return (
        f"; over the {seen} tasks its cameras can show: {mean}",
        f"Not every task can be seen. {why}. Average over the {seen} tasks the cameras show: **{mean}**.",
    )


def write_report(out: Path, ctx: dict) -> Path:
    trained, random_, verdicts = ctx["eval_policy"], ctx["eval_random"], ctx["observability"]
    size = trained["protocol"].get("image_size")
    rows = [
        f"| task | trained policy | 95% CI | random policy | 95% CI | seen by the cameras at {size} px |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in trained["tasks"].items():
        r = random_["tasks"][name]
        rows.append(
            f"| {name} | {t['success_rate']:.2f} | [{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}] | "
            f"{r['success_rate']:.2f} | [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}] | {verdicts[name]['verdict']} |"
        )
    rows.append(f"| **average** | **{trained['average_success']:.2f}** | | **{random_['average_success']:.2f}** | | |")
    videos = sorted((out / "eval_policy" / "videos").glob("*.mp4"))
    train_summary, data = ctx["train"], ctx["data"]
    text = f"""# vla demo report

Suite **mw-easy** (MetaWorld: {", ".join(trained["tasks"])}), {trained["protocol"]["episodes_per_task"]} episodes
per task from the suite's fixed evaluation init states (disjoint from the demonstration seeds).

## Success

{chr(10).join(rows)}

The trained policy {"clearly beats" if trained["average_success"] > random_["average_success"] + 0.2 else "does not clearly beat"}
the random policy on the same episodes.

{observable_summary(trained, verdicts)[1]} (`vla observability --suite mw-easy` tells how each verdict is found.)

**Inputs.** The policy sees {ctx["inputs"]}, nothing else: it must find the objects in the images.
The images and the instruction go through the VLM (a tiny SmolVLM architecture with random initial
weights: nothing is downloaded).

## Training

- data: {data.get("episodes_written", "?")} scripted episodes ({ctx["args"].episodes_per_task} per task), expert success
  {100 * data.get("success_rate", float("nan")):.0f}% ({data.get("episodes_per_minute", float("nan")):.1f} episodes/min), at `{ctx["paths"]["data"]}`
- {train_summary["steps"]} steps, loss {train_summary["first_loss"]:.4f} -> {train_summary["final_loss"]:.4f},
  {train_summary["wall_time_s"]:.0f} s, {train_summary["mean_samples_per_s"]:.1f} samples/s

![loss curve](train/loss_curve.png)

## Rollout

{f"[{videos[0].name}](eval_policy/videos/{videos[0].name})" if videos else "(no video recorded)"}

## Serving

`vla serve` answered a request through `vla.serve.PolicyClient`: actions {ctx["serve"]["actions_shape"]},
round trip {ctx["serve"]["round_trip_ms"]} ms, max |server - in-process| = {ctx["serve"]["max_abs_diff_vs_in_process"]:.2e}.

## Timings

{chr(10).join(f"- {k}: {v:.0f} s" for k, v in ctx["timings"].items())}
"""
    path = out / "report.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--gpu", action="store_true", help="the bigger recipe (automatic when a GPU is present)")
    p.add_argument("--episodes-per-task", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--eval-episodes", type=int, default=None)
    a = p.parse_args(argv)
    gpu = a.gpu or torch.cuda.is_available()
    a.episodes_per_task = a.episodes_per_task or (50 if gpu else 10)
    steps = a.steps or (20000 if gpu else 1500)
    eval_episodes = a.eval_episodes or (50 if gpu else 10)
    num_envs = 8 if gpu else 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "data": out / "data",
        "train": out / "train",
        "eval_policy": out / "eval_policy",
        "eval_random": out / "eval_random",
        "report": out / "report.md",
    }
    timings: dict[str, float] = {}
    ctx: dict = {"args": a, "paths": paths, "timings": timings}

    def timed(name, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - t
        return result

    banner(f"1/5 generating mw-easy demonstrations ({a.episodes_per_task} per task)")
    ctx["data"] = timed("generate", generate_data, paths["data"], a.episodes_per_task, 64)
    banner(f"2/5 training a tiny VLA ({steps} steps{', GPU recipe' if gpu else ''})")
    ctx["train"] = timed("train", train, paths["train"], paths["data"], steps, 256 if gpu else 16, gpu)
    ckpt = paths["train"] / "checkpoints" / "last"
    ctx["inputs"] = policy_inputs(ckpt)
    print(f"the policy sees {ctx['inputs']}")
    ctx["observability"] = timed("observability", observability, ckpt)
    banner(f"3/5 evaluating on mw-easy ({eval_episodes} episodes per task): trained policy, then random")
    ctx["eval_policy"] = timed(
        "eval policy", evaluate, paths["eval_policy"], ckpt, None, eval_episodes, num_envs, 1, device
    )
    ctx["eval_random"] = timed(
        "eval random", evaluate, paths["eval_random"], None, "random", eval_episodes, num_envs, 0, device
    )
    banner("4/5 serving the policy and checking one request through the client")
    ctx["serve"] = timed("serve", serve_check, ckpt)
    print(json.dumps(ctx["serve"], indent=2))
    banner("5/5 report")
    report = write_report(out, ctx)
    print(f"""
trained policy: average success {ctx["eval_policy"]["average_success"]:.2f}{observable_summary(ctx["eval_policy"], ctx["observability"])[0]}  (random: {ctx["eval_random"]["average_success"]:.2f})
  data        {paths["data"]}
  training    {paths["train"]}  (metrics.jsonl, loss_curve.png, checkpoints/last)
  evaluation  {paths["eval_policy"]}  and  {paths["eval_random"]}  (results.json, results.md, videos/)
  serving     {ctx["serve"]["log"]}
  report      {report}
""")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    raise SystemExit(main())
