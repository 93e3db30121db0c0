"""Real LIBERO (hf-libero + installed assets): setup, official init states, observation conventions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eval.suites import get_suite
from eval.suites import libero as lib
from eval.suites.libero_setup import ensure_libero, libero_root


def test_setup_is_idempotent_and_points_libero_at_our_config(tmp_path, monkeypatch):
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    first = ensure_libero(config_dir=tmp_path)
    second = ensure_libero(config_dir=tmp_path)
    assert any("wrote" in line for line in first if line.startswith("config"))
    assert second[0].endswith("(already linked)") and second[1].endswith("(up to date)"), second
    assert os.environ["LIBERO_CONFIG_PATH"] == str(tmp_path)
    assert (tmp_path / "config.yaml").is_file()
    assets = libero_root() / "assets"
    assert (assets / "scenes").is_dir() and (assets / "articulated_objects").is_dir()


def test_quat_to_axis_angle_state_layout():
    # 90 degrees about z, as robosuite's (x, y, z, w) quaternion.
    s = np.sin(np.pi / 4)
    state = lib.libero_state(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, s, s]), np.array([0.04, -0.04]))
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state, [1, 2, 3, 0, 0, np.pi / 2, 0.04, -0.04], atol=1e-6)


@pytest.fixture(scope="module")
def spatial():
    ensure_libero()
    return get_suite("libero_spatial", image_size=128, task_ids=[0])


def test_suites_use_the_official_init_states_and_step_limits(spatial):
    task = spatial.tasks[0]
    assert task.num_episodes == 50 and task.max_steps == 280
    assert task.instruction == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    assert (spatial.state_dim, spatial.action_dim, spatial.cameras) == (8, 7, ("image", "wrist"))
    assert Path(spatial.bddl_files[0]).is_file()
    assert [get_suite(n, task_ids=[0], episodes=1).tasks[0].max_steps for n in lib.MAX_STEPS] == [
        280,
        280,
        300,
        520,
        400,
    ]


@pytest.mark.sim
def test_libero_env_restores_init_state_and_follows_lerobot_conventions(spatial):
    from libero.libero.envs import OffScreenRenderEnv

    env = spatial.make_env(0)
    try:
        assert isinstance(env._env, OffScreenRenderEnv)
        env.settle_steps = 0  # compare the restored state exactly, before any settling
        obs = env.reset(0)
        np.testing.assert_allclose(env._env.get_sim_state()[1:], spatial.tasks[0].init_states[0][1:], atol=1e-12)

        # Images: (128, 128, 3) uint8, the raw robosuite frame rotated by 180 degrees.
        for cam, raw_name in lib.CAMERAS.items():
            img = obs["images"][cam]
            assert img.shape == (128, 128, 3) and img.dtype == np.uint8
            np.testing.assert_array_equal(img, env.render_raw(raw_name)[::-1, ::-1])
        # Upright agentview: the table (bright) fills the lower half, the robot's dark
        # surroundings the upper; robosuite's raw frame has it the other way round.
        gray = obs["images"]["image"].astype(np.float32).mean(-1)
        assert gray[64:].mean() > gray[:64].mean() + 10

        # State: eef pos (3) + axis-angle of eef quat (3) + gripper qpos (2), from robosuite's raw obs.
        raw = env.raw_obs()
        from robosuite.utils.transform_utils import quat2axisangle

        np.testing.assert_allclose(obs["state"][:3], raw["robot0_eef_pos"], rtol=1e-6)
        np.testing.assert_allclose(obs["state"][3:6], quat2axisangle(raw["robot0_eef_quat"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(obs["state"][6:], raw["robot0_gripper_qpos"], rtol=1e-6)
        assert obs["state"].dtype == np.float32 and obs["instruction"] == spatial.tasks[0].instruction

        quiet = env.step(lib.NOOP_ACTION, render=False)
        assert quiet.obs is None and quiet.success is False and quiet.done is False
        up = np.array([0, 0, 1.0, 0, 0, 0, -1])  # move the hand up: the state must follow
        for _ in range(3):
            result = env.step(up, render=False)
        result = env.step(up, render=True)
        assert result.obs["state"][2] > obs["state"][2] + 0.005 and env.steps == 5
        assert result.obs["images"]["wrist"].shape == (128, 128, 3)
        with pytest.raises(ValueError, match=r"expected shape \(7,\)"):
            env.step(np.zeros(4))
    finally:
        env.close()
