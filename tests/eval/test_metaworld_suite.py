"""MetaWorld suites: definitions, fixed init states, env API, expert success, image orientation."""

from __future__ import annotations

import numpy as np
import pytest

from eval.suites import get_suite, suite_names
from eval.suites import metaworld as mws

ALL_SUITES = {"mw-easy", "mw10", "mw50", "libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"}


def test_registry_lists_suites_and_suggests_on_typo():
    assert ALL_SUITES <= set(suite_names())
    with pytest.raises(KeyError, match="Did you mean 'mw-easy'"):
        get_suite("mw-esy")


def test_suite_definitions_match_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT10_V3

    mw50, mw10, easy = get_suite("mw50"), get_suite("mw10"), get_suite("mw-easy")
    assert [t.env_name for t in mw50.tasks] == list(ALL_V3_ENVIRONMENTS)
    assert [t.env_name for t in mw10.tasks] == list(MT10_V3)
    assert [t.env_name for t in easy.tasks] == list(mws.EASY) and len(mws.EASY) == 5
    instructions = [t.instruction for t in mw50.tasks]
    assert all(instructions) and len(set(instructions)) == 50
    for suite, limit in ((easy, 150), (mw10, 300), (mw50, 500)):
        assert all(t.max_steps == limit and t.num_episodes == mws.EVAL_EPISODES for t in suite.tasks)
    assert (mw10.state_dim, mw10.action_dim, mw10.cameras) == (4, 4, ("image", "wrist"))


def test_config_overrides_and_errors():
    s = get_suite("mw10", episodes=3, task_names=["reach-v3"], max_steps=40, image_size=64, cameras=("image",))
    assert [t.name for t in s.tasks] == ["reach-v3"] and s.tasks[0].num_episodes == 3
    assert s.tasks[0].max_steps == 40 and s.image_size == 64 and s.cameras == ("image",)
    with pytest.raises(KeyError, match="no task"):
        get_suite("mw-easy", task_names=["push-v3"])
    with pytest.raises(ValueError, match="max_steps"):
        get_suite("mw-easy", max_steps=501)


def test_init_state_files_are_consistent_and_reproducible():
    mw50 = mws.load_init_states("mw50")
    for suite in ("mw-easy", "mw10"):
        for name, states in mws.load_init_states(suite).items():
            assert states == mw50[name]  # same env, same eval episodes in every suite
    # Regenerating from the seeds gives the stored values bit for bit.
    assert mws.make_init_states(("reach-v3", "drawer-close-v3"), episodes=3) == {
        n: mw50[n][:3] for n in ("reach-v3", "drawer-close-v3")
    }
    for states in mw50.values():
        assert len({tuple(s["rand_vec"]) for s in states}) == len(states)


def test_eval_and_demo_seeds_are_disjoint():
    eval_seeds = {s["seed"] for states in mws.load_init_states("mw50").values() for s in states}
    assert min(eval_seeds) >= mws.EVAL_SEED_BASE
    demo = {mws.demo_seed(seed, name, ep) for seed in (0, 1, 7, 199) for name in mws.INSTRUCTIONS for ep in range(60)}
    assert len(demo) == 4 * 50 * 60 and not demo & eval_seeds
    with pytest.raises(ValueError, match="below"):
        mws.demo_seed(200, "reach-v3", 0)
    # And the drawn states differ: demo rand_vecs never coincide with an eval one.
    suite = get_suite("mw-easy", cameras=())
    env = suite.make_env(0)
    try:
        demo_vecs = np.array([env.sample_init_state(mws.demo_seed(0, "reach-v3", ep)) for ep in range(20)])
    finally:
        env.close()
    eval_vecs = np.array([s["rand_vec"] for s in mws.load_init_states("mw50")["reach-v3"]])
    assert np.abs(demo_vecs[:, None] - eval_vecs[None]).max(-1).min() > 1e-6


@pytest.fixture(scope="module")
def reach_env():
    suite = get_suite("mw-easy", image_size=64, task_names=["reach-v3"])
    env = suite.make_env(0)
    yield env
    env.close()


@pytest.mark.sim
def test_reset_is_deterministic_and_step_renders_on_demand(reach_env):
    env = reach_env
    first = env.reset(3)
    assert set(first) == {"images", "state", "instruction", "env_state"}
    assert first["instruction"] == mws.INSTRUCTIONS["reach-v3"]
    for cam in ("image", "wrist"):
        assert first["images"][cam].shape == (64, 64, 3) and first["images"][cam].dtype == np.uint8
    assert first["state"].shape == (4,) and first["state"].dtype == np.float32
    assert first["env_state"].shape == (39,) and first["env_state"].dtype == np.float32
    np.testing.assert_array_equal(first["state"], first["env_state"][:4])

    quiet = env.step(np.array([1.0, 0.0, 0.0, 0.0]), render=False)
    assert quiet.obs is None and isinstance(quiet.success, bool) and not quiet.done
    loud = env.step(np.array([1.0, 0.0, 0.0, 0.0]), render=True)
    assert loud.obs["images"]["image"].shape == (64, 64, 3) and env.steps == 2
    assert not np.array_equal(loud.obs["env_state"], first["env_state"])  # the hand moved

    again = env.reset(3)
    for cam in ("image", "wrist"):
        np.testing.assert_array_equal(again["images"][cam], first["images"][cam])
    np.testing.assert_array_equal(again["env_state"], first["env_state"])
    other = env.reset(4)
    assert not np.array_equal(other["env_state"][-3:], first["env_state"][-3:])  # another goal
    with pytest.raises(IndexError, match="fixed init states"):
        env.reset(mws.EVAL_EPISODES)
    with pytest.raises(ValueError, match=r"expected shape \(4,\)"):
        env.step(np.zeros(7))


@pytest.mark.sim
def test_step_limit_is_enforced():
    suite = get_suite("mw-easy", cameras=(), max_steps=3, task_names=["reach-v3"])
    with suite.make_env(0) as env:
        env.reset(0)
        dones = [env.step(np.zeros(4), render=False).done for _ in range(3)]
        assert dones == [False, False, True]
        with pytest.raises(RuntimeError, match="max_steps=3"):
            env.step(np.zeros(4), render=False)


@pytest.mark.sim
def test_scripted_expert_succeeds_within_the_step_limit():
    from metaworld.policies import ENV_POLICY_MAP

    suite = get_suite("mw-easy", cameras=(), task_names=["button-press-topdown-v3"])
    with suite.make_env(0) as env:
        env.reset(0)
        expert = ENV_POLICY_MAP["button-press-topdown-v3"]()
        assert not env.step(np.zeros(4), render=False).success  # not pressed at the start
        result = None
        while env.steps < env.task.max_steps:
            result = env.step(expert.get_action(env.env_state().astype(np.float64)), render=False)
            if result.done:
                break
        assert result.success is True and result.done


def _pixel(model, data, camera: str, point: np.ndarray, size: int, flips: tuple[int, ...]) -> np.ndarray:
    """(row, col) of a world point in our image of ``camera``: pinhole projection, then our flips."""
    cam = model.camera(camera).id
    rot = data.cam_xmat[cam].reshape(3, 3)  # columns: camera x (right), y (up), z (backward) in world
    x, y, z = rot.T @ (point - data.cam_xpos[cam])
    f = (size / 2) / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    rc = np.array([size / 2 - f * y / -z, size / 2 + f * x / -z])  # raw render: row 0 at camera +y
    for axis in flips:
        rc[axis] = size - rc[axis]
    return rc


@pytest.mark.sim
def test_third_person_image_is_upright(reach_env):
    import mujoco

    env = reach_env
    obs = env.reset(0)
    model, data, size = env._env.model, env._env.data, 64
    camera, flips = mws.CAMERAS["image"]
    raw = env._renderer._renderer  # mujoco.Renderer with our scene flags
    raw.update_scene(data, camera=camera)
    np.testing.assert_array_equal(obs["images"]["image"], raw.render()[::-1, ::-1])

    # Pixels: small geoms land in our (flipped) frame where projection puts their centres.
    seg = mujoco.Renderer(model, size, size)
    seg.enable_segmentation_rendering()
    seg.update_scene(data, camera=camera)
    ids = np.flip(seg.render()[..., 0], axis=flips)  # (Hi, Wi) geom id per pixel, -1 = background
    seg.close()
    errors = []
    for geom in np.unique(ids[ids >= 0]):
        rows, cols = np.nonzero(ids == geom)
        if 4 <= rows.size <= 60:  # small enough for its centroid to be its centre
            expected = _pixel(model, data, camera, data.geom_xpos[geom], size, flips)
            errors.append(np.abs([rows.mean() - expected[0], cols.mean() - expected[1]]).max())
    assert len(errors) >= 3 and np.median(errors) < 3, errors
    hand_pos = data.body("hand").xpos.copy()

    # Upright: a point above the hand is higher in the image; not mirrored: the image's
    # right and up directions span the view like a proper rotation does.
    above = _pixel(model, data, camera, hand_pos + [0, 0, 0.2], size, flips)
    assert above[0] < _pixel(model, data, camera, hand_pos, size, flips)[0] - 5
    rot = data.cam_xmat[model.camera(camera).id].reshape(3, 3)
    sign = {ax: (-1 if ax in flips else 1) for ax in (0, 1)}
    right, up, backward = sign[1] * rot[:, 0], sign[0] * rot[:, 1], rot[:, 2]
    assert up[2] > 0 and np.dot(np.cross(right, up), backward) > 0.99
