"""`vla eval`: score a checkpoint, a reference policy, a LeRobot policy or a policy server on a simulated suite.

    vla eval --checkpoint outputs/run/checkpoints/last --suite mw10 --episodes-per-task 50 --num-envs 2 --out DIR
    vla eval --policy oracle --suite mw-easy --episodes-per-task 5 --out DIR
    vla eval --policy random --suite libero_spatial --tasks 0 --episodes-per-task 1 --max-steps 20 --out DIR
    vla eval --server ws://localhost:8000 --suite mw10 --n-action-steps 5 --out DIR
    vla eval --policy lerobot:RUN/checkpoints/last/pretrained_model --suite mw-easy --num-envs 2 --out DIR
    vla eval --checkpoint CKPT --dataset DIR --frames 64 --out OUT   # open loop, for robots with no simulator
    vla eval --policy random --suite mw10 --episodes-per-task 50 --shard 0/4 --out DIR   # one of 4 shards
    vla eval --checkpoint CKPT --suite libero_spatial --episodes-per-task 50 --num-envs 4 --gpus 0,1,2,3 --out DIR
    vla eval merge DIR [--out OUT]   # DIR/shard_* (or shard folders, any number) -> one report

Options (EvalConfig in eval/runner.py): --suite, --checkpoint | --policy oracle|random|lerobot:DIR | --server URL,
--episodes-per-task, --first-episode (init states first..first+N-1; default 0), --num-envs, --tasks
(indices or names, comma-separated), --max-steps, --seed, --protocol lerobot|openpi (LIBERO: scene seeds
1000+i and LeRobot's step limits, as lerobot-eval; or seed 7+i and 220 steps on libero_spatial, as openpi's
LIBERO client; written into results.json), --video-episodes K, --device, --compile
(regional torch.compile), --n-action-steps, --temporal-ensemble-coeff C | --adaptive-ensemble-alpha A (a new chunk every
step, blended: ACT's or CogACT's ensembling, whatever the checkpoint was trained with), --image-size, --shard K/N (= --shard-index K --num-shards N: the
K-th of N contiguous, balanced shares of the run's (task, episode) list, into DIR/shard_K; episode seeds and
init states are the unsharded run's), --out. A checkpoint trained with policy.temporal_ensemble_coeff
plays ACT's ensembled actions, as Policy.select_action does. --policy lerobot:DIR plays a LeRobot policy
(ACT, Diffusion Policy, ...: a folder LeRobot's from_pretrained loads, e.g. from `vla peer train`) with
LeRobot's own processors, one select_action per step (eval/lerobot_policy.py).

Writes DIR/results.json, results.md, success.png, episodes.jsonl (rerun the same command to resume),
protocol.json and DIR/videos/*_{success,failure}.mp4. With --dataset (open loop, eval/offline.py):
results.json and results.md with the chunk MAE in robot and normalized units beside the dataset-mean
predictor's on the same frames.

--gpus 0,1,... (or --devices cuda:0,cpu,...) runs one shard per device on this machine, each its own process with
its policy replica and its environment workers rendering on that GPU, shows one progress bar, and merges the
shards into --out (logs in OUT/logs/shard_K.log); the result equals the unsharded run's, and rerunning resumes.

`vla eval merge DIR... [--out OUT]` joins shards: each DIR is a shard's folder (DIR/shard_K) or the --out of
the shard runs (all its shard_* folders). It reads their episodes.jsonl and protocol.json, refuses shards of
different protocols (naming the differing keys), missing or repeated shards and missing or repeated episodes,
and writes to OUT (default: the folder holding the shards) what the unsharded run writes: results.json
(intervals over all episodes), results.md, success.png, episodes.jsonl, protocol.json and videos/. An unfinished
shard resumes by rerunning its command. scripts/slurm_eval.sbatch runs the shards as a SLURM array.
"""

from __future__ import annotations

import json

from vla.cli.common import friendly_errors, hyphens_to_underscores


def shard_to_index_and_count(argv: list[str]) -> list[str]:
    """``--shard K/N`` (or ``--shard=K/N``) -> ``--shard-index K --num-shards N``."""
    from eval.runner import parse_shard

    out, args = [], iter(argv)
    for a in args:
        if a == "--shard" or a.startswith("--shard="):
            value = a.partition("=")[2] if "=" in a else next(args, "")
            k, n = parse_shard(value)
            out += [f"--shard-index={k}", f"--num-shards={n}"]
        else:
            out.append(a)
    return out


def merge(argv: list[str]) -> int:
    """``vla eval merge DIR... [--out OUT]``."""
    dirs, out, args = [], None, iter(argv)
    for a in args:
        if a == "--out" or a.startswith("--out="):
            out = a.partition("=")[2] if "=" in a else next(args, None)
            if not out:
                raise ValueError("--out needs a folder")
        elif a.startswith("--"):
            raise ValueError(f"vla eval merge: unknown option {a!r} (usage: vla eval merge DIR... [--out OUT])")
        else:
            dirs.append(a)
    if not dirs:
        raise ValueError("usage: vla eval merge DIR... [--out OUT]")
    from eval.runner import find_shard_dirs, merge_dirs, merged_out_dir

    out = merged_out_dir(find_shard_dirs(dirs), out)
    res = merge_dirs(dirs, out)
    summary = {name: round(t["success_rate"], 4) for name, t in res["tasks"].items()}
    episodes = res["overall"]["episodes"]
    print(
        json.dumps(
            {"average_success": res["average_success"], "episodes": episodes, "tasks": summary, "out": str(out)},
            indent=2,
        )
    )
    return 0


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    if argv and argv[0] == "merge":
        with friendly_errors("eval merge"):
            return merge(argv[1:])
        return 1
    with friendly_errors("eval") as failures:
        from eval.parallel import run_on_devices, split_device_flag
        from eval.runner import EvalConfig, evaluate, get_suite, select_tasks
        from vla.config import parse_config

        argv, devices = split_device_flag(argv)
        cfg = parse_config(EvalConfig, hyphens_to_underscores(shard_to_index_and_count(argv)))
        failures.run_dir = cfg.out
        if devices:  # one shard per device, merged: equals the unsharded run
            cfg.validate()
            total = len(select_tasks(get_suite(cfg.suite), cfg.tasks)) * cfg.episodes_per_task
            res = run_on_devices(argv, devices, total, cfg.progress)
            summary = {name: round(t["success_rate"], 4) for name, t in res["tasks"].items()}
            print(json.dumps({"average_success": res["average_success"], "tasks": summary, "out": cfg.out}, indent=2))
            return 0
        if cfg.dataset:
            from eval.offline import evaluate_offline
            from vla.models.policy import Policy

            if not cfg.checkpoint:
                raise ValueError("--dataset (open-loop evaluation) needs --checkpoint")
            res = evaluate_offline(
                Policy.load(cfg.checkpoint, device=cfg.device), cfg.dataset, cfg.out, cfg.frames, seed=cfg.seed
            )
            print(json.dumps({k: v for k, v in res.items() if k != "mae_per_dim"} | {"out": cfg.out}, indent=2))
            return 0
        res = evaluate(cfg)
        summary = {name: round(t["success_rate"], 4) for name, t in res["tasks"].items()}
        print(json.dumps({"average_success": res["average_success"], "tasks": summary, "out": cfg.out}, indent=2))
    return 0
