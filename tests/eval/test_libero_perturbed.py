"""LIBERO-plus and LIBERO-PRO perturbation suites (eval/suites/libero_perturbed.py): task sources, families and
a random-policy smoke run of each family on the real simulator."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from eval.runner import EvalConfig, evaluate
from eval.suites import get_suite, suite_names
from eval.suites import libero_perturbed as lp
from eval.suites.libero import bddl_instruction
from eval.suites.libero_setup import ensure_libero

FAMILIES = ("liberoplus_language", "liberopro_language", "liberopro_task", "liberopro_position")


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
