"""Real LIBERO (hf-libero + installed assets): setup, official init states, observation conventions."""

from __future__ import annotations

import dataclasses
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
    assert second[0].startswith(f"assets: {libero_root() / 'assets'}") and second[1].endswith("(up to date)"), second
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


def test_camera_names_of_lerobot_openpi_and_robosuite_map_to_our_cameras():
    wrist, agent = "robot0_eye_in_hand", "agentview"
    names = ("image", "wrist", "image2", "wrist_image", "agentview_image", "robot0_eye_in_hand_image", agent, wrist)
    assert lib.robosuite_cameras(names) == dict(
        zip(names, [agent, wrist, wrist, wrist, agent, wrist, agent, wrist], strict=True)
    )
    with pytest.raises(KeyError, match=r"unknown LIBERO camera\(s\) \['image3'\].*agentview_image"):
        lib.robosuite_cameras(("image", "image3"))


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


def test_protocols_set_scene_seeds_and_step_limits_and_are_written_into_the_results():
    """``--protocol lerobot`` (default): lerobot-eval's scene seeds (1000 + i) and LeRobot's step limits;
    ``openpi``: seed 7 + i and 220 steps on libero_spatial; the name and the seeds go into protocol.json."""
    from eval.runner import EvalConfig, build_protocol, build_suite

    default = build_suite("libero_spatial")
    openpi = build_suite("libero_spatial", protocol="openpi")
    assert (default.protocol, default.scene_seed, default.tasks[0].max_steps) == ("lerobot", 1000, 280)
    assert (openpi.protocol, openpi.scene_seed, openpi.tasks[0].max_steps) == ("openpi", 7, 220)
    assert build_suite("libero_goal", protocol="openpi").tasks[0].max_steps == 300  # openpi's other limits
    cfg = EvalConfig(suite="libero_spatial", protocol="openpi", episodes_per_task=2, first_episode=3)
    proto = build_protocol(cfg, openpi, [0], {"name": "random"})
    assert proto["protocol"] == "openpi" and proto["step_limits"] == {openpi.tasks[0].name: 220}
    assert proto["tasks"][0]["scene_seeds"] == [10, 11]
    with pytest.raises(ValueError, match="--protocol must be one of lerobot, openpi"):
        build_suite("libero_spatial", protocol="octo")
    with pytest.raises(ValueError, match=r"does not support overriding \['protocol'\]"):
        build_suite("mw-easy", protocol="openpi")
    assert "protocol" not in build_protocol(EvalConfig(), build_suite("mw-easy"), [0], {"name": "random"})


@pytest.mark.sim
def test_libero_env_restores_init_state_and_follows_lerobot_conventions(spatial):
    from libero.libero.envs import OffScreenRenderEnv

    env = spatial.make_env(0)
    try:
        assert isinstance(env._env, OffScreenRenderEnv)
        env.settle_steps = 0  # compare the restored state exactly, before any settling
        obs = env.reset(0)
        np.testing.assert_allclose(env._env.get_sim_state()[1:], spatial.tasks[0].init_states[0][1:], atol=1e-12)

        # Images: (128, 128, 3) uint8 (equal to robosuite's own camera observations: the test below).
        for cam in lib.CAMERAS:
            assert obs["images"][cam].shape == (128, 128, 3) and obs["images"][cam].dtype == np.uint8
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


@pytest.mark.sim
def test_images_equal_robosuites_own_camera_observations(spatial):
    """What robosuite's camera observables give (an OffScreenRenderEnv with camera observations, read as
    LeRobot's and openpi's LIBERO envs read ``agentview_image`` / ``robot0_eye_in_hand_image``, after the
    same reset, init state and settle steps), rotated 180 degrees as both do: our on-demand images must be
    exactly those, also after steps that did not render, under our names and LeRobot's and openpi's."""
    from libero.libero.envs import OffScreenRenderEnv

    wrist = "robot0_eye_in_hand"
    names = {"image": "agentview", "wrist": wrist, "image2": wrist, "wrist_image": wrist}  # ours, LeRobot's, openpi's
    env = dataclasses.replace(spatial, cameras=tuple(names)).make_env(0)
    reference = OffScreenRenderEnv(
        bddl_file_name=spatial.bddl_files[0],
        camera_names=list(lib.CAMERAS.values()),
        camera_heights=128,
        camera_widths=128,
    )

    def assert_same(ours: dict, theirs: dict, when: str) -> None:
        assert list(ours["images"]) == list(names)
        for cam, robosuite_name in names.items():
            want = theirs[f"{robosuite_name}_image"][::-1, ::-1]
            np.testing.assert_array_equal(ours["images"][cam], want, err_msg=f"{cam} {when}")
        np.testing.assert_array_equal(ours["state"][:3], theirs["robot0_eef_pos"].astype(np.float32))

    try:
        # LIBERO places its fixtures (cabinet, stove) from numpy's global RNG at every reset, outside the init
        # state: the same seed before both resets puts them in the same place (ours: the protocol's, 1000 + 0).
        ours = env.reset(0)
        reference.seed(spatial.scene_seed)
        reference.reset()
        reference.set_init_state(spatial.tasks[0].init_states[0])
        for _ in range(lib.SETTLE_STEPS):
            theirs, _, _, _ = reference.step(lib.NOOP_ACTION)
        assert_same(ours, theirs, "after reset")
        move = np.array([0.3, -0.2, 0.5, 0, 0, 0.1, 1.0])
        for step in range(4):
            result = env.step(move, render=step in (0, 3))
            theirs, _, _, _ = reference.step(move)
            if result.obs is not None:
                assert_same(result.obs, theirs, f"at step {step}")
    finally:
        env.close()
        reference.close()


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory):
    """Episode 0 of libero_spatial task 0, each run in its own process (tests/eval/libero_parity_worker.py):
    our suite twice, LeRobot 0.6.1's ``LiberoEnv`` as lerobot-eval runs it (seed 1000), and our suite under
    protocol openpi (seed 7). Two at a time on two cores."""
    import subprocess
    import sys

    worker = Path(__file__).with_name("libero_parity_worker.py")
    out = tmp_path_factory.mktemp("parity")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {"ours": "ours", "ours_again": "ours", "lerobot": "lerobot", "openpi": "ours-openpi"}
    names = list(runs)
    for pair in (names[:2], names[2:]):
        procs = {
            n: subprocess.Popen(
                [sys.executable, str(worker), runs[n], str(out / f"{n}.npz"), "128"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for n in pair
        }
        for n, p in procs.items():
            log, _ = p.communicate(timeout=600)
            assert p.returncode == 0, f"{n}: {log[-3000:]}"
    return {n: dict(np.load(out / f"{n}.npz")) for n in names}


@pytest.mark.sim
@pytest.mark.slow
def test_parity_with_lerobots_libero_env_in_separate_processes(parity_runs):
    """LeRobot's ``LiberoEnv`` (reset(seed=1000): lerobot-eval's first rollout, init state 0, 10 settle steps)
    and our suite's episode 0 under protocol lerobot: identical MuJoCo state, identical scene model (where
    LIBERO placed its unseeded-by-the-init-state fixtures), identical 8-dim state and pixel-identical agent-view
    and wrist images, after the settle steps and after each of 5 identical actions."""
    ours, theirs = parity_runs["ours"], parity_runs["lerobot"]
    assert ours["agentview"].shape == (6, 128, 128, 3) and ours["wrist"].shape == (6, 128, 128, 3)
    for key in ("sim_state", "model_hash", "state", "agentview", "wrist"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert len(set(ours["model_hash"])) == 1  # the scene model is fixed within the episode
    assert not np.array_equal(ours["agentview"][0], ours["agentview"][-1])  # the actions moved the arm
    # The scene seed matters: protocol openpi (seed 7) places the fixtures elsewhere.
    assert parity_runs["openpi"]["model_hash"][0] != ours["model_hash"][0]


@pytest.mark.sim
@pytest.mark.slow
def test_libero_episodes_are_reproducible_across_processes(parity_runs):
    """The same episode in two processes: the same scene model, MuJoCo state and image hashes."""
    import hashlib

    first, second = parity_runs["ours"], parity_runs["ours_again"]

    def hashes(run):
        return [hashlib.sha256(run[cam][i].tobytes()).hexdigest() for cam in ("agentview", "wrist") for i in range(6)]

    assert hashes(first) == hashes(second)
    np.testing.assert_array_equal(first["sim_state"], second["sim_state"])
    np.testing.assert_array_equal(first["model_hash"], second["model_hash"])


def test_run_time_setup_writes_nothing_inside_the_installed_package(tmp_path, monkeypatch):
    """Only the install step (``python -m eval.suites.libero_setup``, run by ``make install``) links the assets
    inside hf-libero; what every LIBERO code path calls at run time reads the package and writes only our
    config. Here an installed hf-libero without the link (a copy of its folder layout)."""
    from eval.suites import libero_setup

    package = tmp_path / "site-packages" / "libero" / "libero"
    package.mkdir(parents=True)
    (package / "bddl_files").mkdir()
    monkeypatch.setattr(libero_setup, "libero_root", lambda: package)
    monkeypatch.delenv("LIBERO_CONFIG_PATH", raising=False)
    before = sorted(p.name for p in package.iterdir())
    with pytest.raises(FileNotFoundError, match=r"no LIBERO assets.*python -m eval\.suites\.libero_setup"):
        ensure_libero(config_dir=tmp_path / "config")
    assert sorted(p.name for p in package.iterdir()) == before
    # the install step makes the link; run time then finds it and still writes nothing there
    libero_setup.install(config_dir=tmp_path / "config")
    assert (package / "assets").is_symlink() and (package / "assets" / "scenes").is_dir()
    linked = sorted(p.name for p in package.iterdir())
    ensure_libero(config_dir=tmp_path / "config")
    assert sorted(p.name for p in package.iterdir()) == linked and (tmp_path / "config" / "config.yaml").is_file()


@pytest.mark.sim
def test_policy_trained_on_lerobot_libero_keys_evaluates_on_libero(tmp_path, write_synthetic):
    """LeRobot's LIBERO env and its HuggingFaceVLA/libero dataset name the wrist camera ``image2``; its
    lerobot/libero_* datasets and openpi's physical-intelligence/libero ``wrist_image``. A policy trained on
    such keys evaluates on our suite, which renders the camera each name stands for (the test above)."""
    import subprocess
    import sys

    from eval.runner import EvalConfig, evaluate

    data = write_synthetic(
        tmp_path / "libero_lerobot_keys",
        {"image": (32, 32), "image2": (32, 32)},
        8,
        7,
        [10, 10],
        ["pick up the black bowl between the plate and the ramekin and place it on the plate"],
        use_videos=False,
    )
    out = tmp_path / "run"
    args = [
        "train",
        f"--dataset.root={data}",
        "--policy.backbone.preset=tiny-smolvlm",
        "--policy.head.type=regression",
        "--policy.chunk_size=4",
        "--policy.n_action_steps=2",
        "--train.steps=2",
        "--train.batch_size=2",
        "--train.num_workers=0",
        "--augment.enabled=false",
        f"--output_dir={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "vla", *args], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = evaluate(
        EvalConfig(
            checkpoint=str(out / "checkpoints" / "last"),
            suite="libero_spatial",
            tasks="0",
            episodes_per_task=1,
            max_steps=4,
            progress=False,
            out=str(tmp_path / "eval"),
        )
    )
    (task,) = res["tasks"].values()
    assert task["episodes"] == 1 and task["mean_length"] <= 4
    assert res["protocol"]["cameras"] == ["image", "image2"] and res["protocol"]["image_size"] == 32
    with pytest.raises(KeyError, match=r"unknown LIBERO camera\(s\) \['eye'\].*image2.*wrist_image"):
        get_suite("libero_spatial", task_ids=[0], episodes=1, cameras=("eye",)).make_env(0)


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("suite_name", ["libero_spatial", "libero_object"])
def test_reused_compiled_scenes_play_the_episodes_of_a_new_compile(suite_name):
    """``reuse_scenes`` keeps the compiled sim across hard resets (lib.CompiledScenes); an env that reused it for
    every episode and one that compiled every scene anew play episodes 1-3 (after actions that dirtied the
    model's fixtures and the solver's warm start) identically: MuJoCo state, model arrays and both cameras'
    pixels, after the settle steps and after 5 actions. libero_spatial's fixtures move with the seed (the model
    differs between episodes); libero_object's scenes hold more contacts."""
    make = lambda reuse: get_suite(suite_name, task_ids=[0], episodes=4, image_size=64, reuse_scenes=reuse).make_env(0)  # noqa: E731
    reused, fresh = make(True), make(False)
    action = np.array([0.4, -0.3, 0.2, 0.0, 0.0, 0.1, 1.0])
    fixtures = []
    for episode in (1, 2, 3):
        observations = [env.reset(episode) for env in (reused, fresh)]
        for step in range(6):
            a, b = (env._env.sim for env in (reused, fresh))
            np.testing.assert_array_equal(a.get_state().flatten(), b.get_state().flatten(), err_msg=f"{episode}/{step}")
            model_a, model_b = lib.model_arrays(a), lib.model_arrays(b)
            assert all(np.array_equal(model_a[k], model_b[k], equal_nan=True) for k in model_a), (episode, step)
            for camera in ("image", "wrist"):
                np.testing.assert_array_equal(observations[0]["images"][camera], observations[1]["images"][camera])
            observations = [env.step(action).obs for env in (reused, fresh)]
        fixtures.append(lib.model_arrays(a)["body_pos"])
    assert reused.scenes.reused == 3 and fresh.scenes is None  # every reset kept the compiled sim
    moved = not all(np.array_equal(fixtures[0], f) for f in fixtures[1:])
    assert moved == (suite_name == "libero_spatial")  # the seeds placed libero_spatial's fixtures elsewhere
