"""LIBERO evaluation speed when episodes end at different times, as with a real policy (episodes end at success).

    python scripts/bench_eval_mixed_lengths.py [--pairs 4] [--num-envs 2] [--out FILE]

Episodes alternate libero_spatial tasks cut at 100 steps and libero_10 tasks cut at 250 (128 px, both cameras),
one episode per task; the bench policy of ``vla bench eval`` plays the zero action, so no episode succeeds and
any checkout plays exactly the same episodes to the same lengths: run it with another checkout first on
``PYTHONPATH`` to compare code versions (docs/benchmarks.md, "LIBERO evaluation before and after"). Prints one
JSON line: episodes, environment steps, seconds, episodes per minute, steps per second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4, help="libero_spatial / libero_10 task pairs (tasks 0..pairs-1)")
    p.add_argument("--num-envs", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()

    import torch

    import eval.runner as runner
    from eval.bench import tiny_policy
    from eval.suites import get_suite

    ids = list(range(args.pairs))
    short = get_suite("libero_spatial", task_ids=ids, episodes=1, image_size=128)
    long = get_suite("libero_10", task_ids=ids, episodes=1, image_size=128)
    tasks, files = [], []
    for i in ids:
        tasks += [dataclasses.replace(short.tasks[i], max_steps=100), dataclasses.replace(long.tasks[i], max_steps=250)]
        files += [short.bddl_files[i], long.bddl_files[i]]
    mixed = dataclasses.replace(short, tasks=tasks, bddl_files=files)
    runner.build_suite = lambda *a, **k: mixed  # the runner plays this suite whatever name it is given
    policy = tiny_policy(mixed, chunk_size=10, n_action_steps=5)
    with torch.no_grad():  # the zero action (older checkouts' bench policy is not zeroed)
        policy.head.action_out.weight.zero_()
        policy.head.action_out.bias.zero_()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = runner.evaluate_policy(policy, "libero_spatial", 1, out, num_envs=args.num_envs, progress=False)
        seconds = time.perf_counter() - t0
    steps = sum(t["mean_length"] * t["episodes"] for t in res["tasks"].values())
    episodes = sum(t["episodes"] for t in res["tasks"].values())
    row = {
        "runner": runner.__file__,
        "episodes": episodes,
        "steps": int(steps),
        "successes": sum(t["successes"] for t in res["tasks"].values()),
        "num_envs": args.num_envs,
        "seconds": round(seconds, 1),
        "episodes_per_min": round(60 * episodes / seconds, 2),
        "env_steps_per_s": round(steps / seconds, 1),
    }
    print(json.dumps(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
