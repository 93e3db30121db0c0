"""How much faster the runner is than a naive evaluation loop, and how it scales with envs.

``bench_eval(suite)`` times, in one process and on the same episodes:

* **naive**: one env, a rendered observation every step and one ``predict_chunk``
  call per step (the first action of each chunk is executed), the loop most
  evaluation scripts start as;
* **runner, 1 env**: chunked stepping, rendering only when the policy looks;
* **runner, E envs**: the same with E spawn workers and batched inference (worker
  start-up included: it is part of what a user waits for).

The policy is a tiny random-initialized SmolVLM + regression head with the suite's
cameras and dimensions, so the numbers measure the simulator and the plumbing, not
a big model. Its output layer is zeroed, so it always plays the zero action: no episode
succeeds, every episode runs to ``max_steps``, and the three loops do exactly the same
simulation (``equal_work`` checks it). Environment steps per second are reported beside
episodes per minute.
"""

from __future__ import annotations

import logging
import tempfile
import time

import numpy as np
import torch
from einops import rearrange

from eval.runner import build_suite, episode_seed, evaluate_policy, select_tasks
from eval.suites import Suite

log = logging.getLogger(__name__)


def tiny_policy(suite: Suite, chunk_size: int = 8, n_action_steps: int = 4):
    from vla.models.backbones.base import BackboneConfig
    from vla.models.heads.base import HeadConfig
    from vla.models.policy import Policy, PolicyConfig  # importing it registers backbones and heads

    cfg = PolicyConfig(
        backbone=BackboneConfig.get_choice_class("smolvlm")(preset="tiny"),
        head=HeadConfig.get_choice_class("regression")(),
        chunk_size=chunk_size,
        n_action_steps=n_action_steps,
        cameras=list(suite.cameras),
        state_dim=suite.state_dim,
        action_dim=suite.action_dim,
    )
    stats = {
        "state": {"mean": [0.0] * suite.state_dim, "std": [1.0] * suite.state_dim},
        "actions": {"mean": [0.0] * suite.action_dim, "std": [0.5] * suite.action_dim},
    }
    torch.manual_seed(0)
    policy = Policy(cfg, stats).eval()
    with torch.no_grad():  # the zero action (the stats' mean) every step: no episode ends early by succeeding
        policy.head.action_out.weight.zero_()
        policy.head.action_out.bias.zero_()
    return policy


def naive_loop(policy, suite: Suite, episodes: list[tuple[int, int]], seed: int = 0) -> dict:
    """One env, render every step, one policy call per step."""
    steps = 0
    t0 = time.perf_counter()
    env, env_task = None, -1
    try:
        for t, i in episodes:
            if t != env_task:
                if env is not None:
                    env.close()
                env, env_task = suite.make_env(t), t
            obs = env.reset(i)
            done = False
            while not done:
                imgs = np.stack([obs["images"][c] for c in policy.config.cameras])[None]  # (1, N, H, W, 3)
                batch = {
                    "images": rearrange(torch.from_numpy(imgs), "b n h w c -> b n c h w"),
                    "state": torch.from_numpy(obs["state"])[None].float(),
                    "instruction": [obs["instruction"]],
                }
                action = policy.predict_chunk(batch, seed=episode_seed(seed, t, i))[0, 0].numpy()  # (D,)
                res = env.step(action, render=True)
                obs, done = res.obs, res.done
                steps += 1
    finally:
        if env is not None:
            env.close()
    secs = time.perf_counter() - t0
    return {
        "seconds": secs,
        "episodes": len(episodes),
        "steps": steps,
        "episodes_per_min": 60 * len(episodes) / secs,
        "env_steps_per_s": steps / secs,
    }


def _timed_runner(policy, suite_name: str, episodes_per_task: int, tasks: str, max_steps: int, num_envs: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = evaluate_policy(
            policy,
            suite_name,
            episodes_per_task,
            out,
            tasks=tasks,
            max_steps=max_steps,
            num_envs=num_envs,
            progress=False,
        )
        secs = time.perf_counter() - t0
    n = res["overall"]["episodes"]
    steps = sum(t["mean_length"] * t["episodes"] for t in res["tasks"].values())
    return {
        "seconds": secs,
        "episodes": n,
        "steps": int(steps),
        "episodes_per_min": 60 * n / secs,
        "env_steps_per_s": steps / secs,
        "num_envs": num_envs,
    }


def bench_eval(
    suite: str,
    num_envs: int = 2,
    episodes_per_task: int = 4,
    tasks: str = "0",
    max_steps: int = 40,
    n_action_steps: int = 5,
) -> dict:
    """Episodes per minute: naive loop vs runner (1 env) vs runner (``num_envs`` envs).

    ``n_action_steps`` is the policy's replanning interval (5 as in openpi's LIBERO example); the
    runner renders once per chunk, the naive loop every step.
    """
    s = build_suite(suite, max_steps=max_steps)
    policy = tiny_policy(s, chunk_size=max(10, n_action_steps), n_action_steps=n_action_steps)
    episodes = [(t, i) for t in select_tasks(s, tasks) for i in range(episodes_per_task)]
    naive = naive_loop(policy, s, episodes)
    log.info("bench eval %s: naive loop %.1f episodes/min", suite, naive["episodes_per_min"])
    one = _timed_runner(policy, suite, episodes_per_task, tasks, max_steps, 1)
    log.info("bench eval %s: runner, 1 env %.1f episodes/min", suite, one["episodes_per_min"])
    many = _timed_runner(policy, suite, episodes_per_task, tasks, max_steps, num_envs)
    log.info("bench eval %s: runner, %d envs %.1f episodes/min", suite, num_envs, many["episodes_per_min"])
    return {
        "suite": suite,
        "max_steps": max_steps,
        "episodes": len(episodes),
        "num_envs": num_envs,
        "n_action_steps": policy.config.n_action_steps,
        "cameras": list(s.cameras),
        "image_size": s.image_size,
        "torch_threads": torch.get_num_threads(),
        "naive": naive,
        "runner_1env": one,
        f"runner_{num_envs}env": many,
        "equal_work": naive["steps"] == one["steps"] == many["steps"],
        "speedup_runner_vs_naive": one["env_steps_per_s"] / naive["env_steps_per_s"],
        f"speedup_{num_envs}env_vs_1env": many["env_steps_per_s"] / one["env_steps_per_s"],
        f"speedup_{num_envs}env_vs_naive": many["env_steps_per_s"] / naive["env_steps_per_s"],
    }
