"""One LIBERO episode in this process, run by our suite or by LeRobot's ``LiberoEnv``; writes an ``.npz``.

    python tests/eval/libero_parity_worker.py ours|ours-openpi|lerobot OUT.npz IMAGE_SIZE

Episode 0 of libero_spatial task 0 under lerobot-eval's protocol (scene seed 1000, init state 0, 10 settle
steps), then :data:`ACTIONS`. After the settle steps and after each action it records the full MuJoCo state,
a hash of the scene model (bodies, geoms, sites, cameras: where LIBERO placed its fixtures), the 8-dim state
and the agent-view and wrist images as a policy sees them (upright). One process per env: robosuite's render
context is not safe to share between two envs of one process. ``ours-openpi``: our suite under protocol
openpi (scene seed 7), a layout that must differ. Used by tests/eval/test_libero_env.py.
"""

from __future__ import annotations

import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

ACTIONS = np.array(
    [
        [0.3, -0.2, 0.5, 0.0, 0.0, 0.1, -1.0],
        [0.5, 0.4, -0.3, 0.1, -0.1, 0.0, -1.0],
        [-0.2, 0.6, -0.5, 0.0, 0.2, -0.1, 1.0],
        [0.0, -0.5, 0.2, -0.2, 0.0, 0.3, 1.0],
        [0.4, 0.1, 0.0, 0.0, 0.0, 0.0, -1.0],
    ]
)
MODEL_FIELDS = ("body_pos", "body_quat", "geom_pos", "geom_quat", "geom_size", "geom_rgba", "site_pos", "cam_pos")


def model_hash(sim) -> str:
    h = hashlib.sha256()
    for name in MODEL_FIELDS:
        h.update(np.ascontiguousarray(getattr(sim.model, name)).tobytes())
    return h.hexdigest()


def ours(size: int, protocol: str = "lerobot") -> list[tuple]:
    from eval.suites import get_suite

    cameras = ("image", "image2")
    suite = get_suite("libero_spatial", task_ids=[0], episodes=1, image_size=size, cameras=cameras, protocol=protocol)
    env = suite.make_env(0)
    obs = env.reset(0)
    records = []
    for action in [None, *ACTIONS]:
        if action is not None:
            obs = env.step(action).obs
        sim = env._env.sim
        records.append((sim.get_state().flatten(), model_hash(sim), obs["state"], *obs["images"].values()))
    env.close()
    return records


def lerobot(size: int) -> list[tuple]:
    from lerobot.envs.libero import LiberoEnv
    from libero.libero import benchmark

    from eval.suites.libero import libero_state

    bench = benchmark.get_benchmark_dict()["libero_spatial"]()
    env = LiberoEnv(
        bench, 0, "libero_spatial", obs_type="pixels_agent_pos", observation_width=size, observation_height=size
    )
    obs, _ = env.reset(seed=1000)  # lerobot-eval's first rollout: seed cfg.seed (1000), init state 0
    records = []
    for action in [None, *ACTIONS]:
        if action is not None:
            obs, _, _, _, _ = env.step(action)
        sim = env._env.sim
        robot = obs["robot_state"]
        state = libero_state(robot["eef"]["pos"], robot["eef"]["quat"], robot["gripper"]["qpos"])
        # LeRobot's env gives robosuite's upside-down frames; its LIBERO processor rotates them 180 degrees
        images = [np.ascontiguousarray(obs["pixels"][k][::-1, ::-1]) for k in ("image", "image2")]
        records.append((sim.get_state().flatten(), model_hash(sim), state, *images))
    env.close()
    return records


if __name__ == "__main__":
    which, out, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    from eval.suites.libero_setup import ensure_libero

    ensure_libero()
    records = {"ours": ours, "ours-openpi": lambda n: ours(n, "openpi"), "lerobot": lerobot}[which](size)
    np.savez(
        out,
        sim_state=np.stack([r[0] for r in records]),
        model_hash=np.array([r[1] for r in records]),
        state=np.stack([r[2] for r in records]),
        agentview=np.stack([r[3] for r in records]),
        wrist=np.stack([r[4] for r in records]),
    )
