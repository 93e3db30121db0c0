"""Observability of MetaWorld tasks: the pixel counts follow what MuJoCo draws, and the verdicts follow the counts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eval.observability import (
    GOAL_NOT_VISIBLE,
    OBJECT_NOT_VISIBLE,
    OBSERVABLE,
    find_needs,
    judge,
    measure_camera,
    rigid_carriers,
)
from eval.suites import get_suite
from eval.suites.render import mujoco

MIN_CONTRAST, MIN_PIXELS = 64, 4


def test_rigid_carriers_keeps_the_bodies_a_point_moves_with():
    """Body 0 stays put, body 1 translates with the point, body 2 rotates about it: only body 1 carries it."""
    eye = np.eye(3)
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    frames, points = [], []
    for shift in (0.0, 0.3, -0.2):
        xpos = np.array([[0.0, 0.0, 0.0], [shift, 1.0, 0.0], [0.0, 0.0, 0.0]])
        rot = np.eye(3) if shift == 0 else turn
        frames.append((xpos, np.stack([eye, eye, rot])))
        points.append(np.array([shift + 0.1, 1.0, 0.0]))
    assert rigid_carriers(frames, points) == (1,)


@pytest.mark.sim
def test_reach_counts_the_puck_and_the_goal_marker_and_zero_once_they_are_gone():
    suite = get_suite("mw-easy", image_size=64, task_names=["reach-v3"], episodes=3)
    with suite.make_env(0) as env:
        needs = find_needs(env, episode=0, goal_episodes=3)
        model, data = env.sim.model, env.sim.data
        puck, goal_site = model.body("obj").id, model.site("goal").id
        # Found in the simulator: the puck carries the object point; the goal moves alone and a site marks it.
        assert needs.objects == ((puck,),)
        assert not needs.goal_fixed and needs.anchors == () and needs.markers == (goal_site,)

        seen = measure_camera(env, needs, "image", MIN_CONTRAST)
        assert seen.object_pixels[0] > 0 and seen.marker_drawn and seen.marker_pixels > 0 and seen.goal_in_view
        # The projected goal falls on the marker's own pixel of the upright (flipped) frame.
        row, col = (int(x) for x in seen.goal_pixel)
        assert tuple(env.segment_camera("image")[row, col]) == (goal_site, int(mujoco.mjtObj.mjOBJ_SITE))
        # The wrist camera looks down at the table: the goal (in the air) is outside its field of view.
        assert not measure_camera(env, needs, "wrist", MIN_CONTRAST).goal_in_view

        # The puck moved behind the camera counts nothing; the goal marker hidden (alpha 0) is not drawn.
        cam = model.camera("corner2").id
        qpos_at = model.jnt_qposadr[model.body_jntadr[puck]]
        puck_at = data.qpos[qpos_at : qpos_at + 3].copy()
        data.qpos[qpos_at : qpos_at + 3] = data.cam_xpos[cam] + data.cam_xmat[cam].reshape(3, 3)[:, 2]
        mujoco.mj_kinematics(model, data)
        model.site_rgba[goal_site, 3] = 0.0
        gone = measure_camera(env, needs, "image", MIN_CONTRAST)
        assert gone.object_pixels == [0]
        assert not gone.marker_drawn and gone.marker_pixels == 0 and gone.marker_rgb_pixels == 0
        assert gone.goal_in_view  # still where it was: only not drawn
        names = {"objects": [["obj"]], "anchors": [], "markers": ["goal"]}
        assert judge(needs, [gone], names, MIN_PIXELS)[0] == OBJECT_NOT_VISIBLE

        data.qpos[qpos_at : qpos_at + 3] = puck_at  # the puck back, the marker still hidden
        mujoco.mj_kinematics(model, data)
        hidden_goal = measure_camera(env, needs, "image", MIN_CONTRAST)
        assert hidden_goal.object_pixels == seen.object_pixels and hidden_goal.marker_pixels == 0
        verdict, why = judge(needs, [hidden_goal], names, MIN_PIXELS)
        assert verdict == GOAL_NOT_VISIBLE and "not drawn" in why


@pytest.mark.sim
def test_cli_finds_drawer_close_goal_fixed_to_the_drawer_and_writes_its_frames(tmp_path):
    from vla.cli.main import main

    rc = main(
        ["observability", "--suite", "mw-easy", "--tasks", "[drawer-close-v3]", "--compare-sizes", "[]"]
        + ["--out", str(tmp_path)]
    )
    assert rc == 0
    out = tmp_path / "mw-easy"
    report = json.loads((out / "observability.json").read_text())
    [task] = report["tasks"]
    # The closed position is fixed to the drawer's case (it moves with the init state), which both cameras see.
    assert task["goal_kind"] == "anchored" and "drawercase_link" in task["needs"]["anchors_names"]
    assert task["needs"]["objects_names"] == [["drawer_link"]]
    at64 = task["sizes"]["64"]
    assert at64["verdict"] == OBSERVABLE and all(v["anchor_pixels"] > 0 for v in at64["cameras"])
    from PIL import Image

    frame = Image.open(out / "drawer-close-v3.png")
    assert frame.width == 2 * 64 * 4  # two cameras side by side, upscaled 4x
    assert (out / "contact_sheet.png").is_file() and "drawer-close-v3" in (out / "observability.md").read_text()


@pytest.mark.sim
def test_a_policys_cameras_miss_reachs_goal_at_64_px_and_see_it_at_128():
    """task_verdicts judges through the policy's own cameras and resolution: reach-v3's goal marker is one pixel
    in `image` at 64 px and outside `wrist`'s view; at 128 px it is visible. The drawer stays visible."""
    from eval.observability import task_verdicts

    tasks = ["reach-v3", "drawer-close-v3"]
    at64 = task_verdicts("mw-easy", ["image", "wrist"], 64, tasks)
    assert {t: v["verdict"] for t, v in at64.items()} == {"reach-v3": GOAL_NOT_VISIBLE, "drawer-close-v3": OBSERVABLE}
    assert task_verdicts("mw-easy", ["image", "wrist"], 128, ["reach-v3"])["reach-v3"]["verdict"] == OBSERVABLE
    # the wrist camera alone never shows reach's goal, at any of these sizes
    assert task_verdicts("mw-easy", ["wrist"], 128, ["reach-v3"])["reach-v3"]["verdict"] == GOAL_NOT_VISIBLE


def test_observable_average_leaves_out_what_the_cameras_cannot_show():
    from eval.observability import observable_average

    verdicts = {
        "reach-v3": {"verdict": GOAL_NOT_VISIBLE, "why": "1 px"},
        "drawer-close-v3": {"verdict": OBSERVABLE, "why": ""},
        "push-v3": {"verdict": OBSERVABLE, "why": ""},
    }
    success = {"reach-v3": 0.1, "drawer-close-v3": 1.0, "push-v3": 0.5}
    assert observable_average(success, verdicts) == (0.75, ["reach-v3"])
    assert observable_average({"reach-v3": 0.1}, verdicts) == (None, ["reach-v3"])
    with pytest.raises(KeyError, match="window-close-v3"):
        observable_average({**success, "window-close-v3": 1.0}, verdicts)
