"""Can a policy see what a MetaWorld task needs? Object and goal visibility in the suite's cameras.

Our policies read cameras and 4-dim proprioception only, so a task whose goal no camera shows is
solved from pixels only by chance. For each task of a MetaWorld suite this renders the suite's own
env (its cameras, renderer options and first evaluation init state) at a given resolution and
measures, from MuJoCo rather than by eye:

* **What the task needs**, found in the simulator rather than kept in a per-task table (50 tasks
  would mean 50 hand-written entries, each a chance to be wrong):

  - *objects*: every 3-D point MetaWorld reports as an object (the object part of its observation,
    ``_get_pos_objects``) belongs to the bodies that carry it rigidly. Every joint is perturbed
    (``mj_integratePos``), the point is read again, and the bodies in whose frame it stayed put
    carry it (the drawer for drawer-open, the puck for push).
  - *goal*: MetaWorld's goal position (``_get_pos_goal``, what success is measured against),
    compared over several evaluation init states. It is either **fixed** (the same in every
    episode: learnable from demonstrations without seeing it), or **anchored** to bodies that move
    with the init state (drawer-close: fixed to the drawer's case; button-press: to the button box;
    peg-insert-side: to the box with the hole), so seeing those bodies shows the goal, or **free**
    (reach, push, pick-place), shown by nothing but a marker.
  - *goal markers*: sites drawn at the goal position (MetaWorld's ``goal`` sphere and the like).

* **Per camera**, in MuJoCo's segmentation render (the same scene and options as the RGB frame):
  pixels of the object bodies, of the anchor bodies and of the markers; whether a marker is drawn
  at all (its site group on and alpha > 0, as MuJoCo builds the scene); how many RGB pixels the
  marker changes (the frame rendered again with the marker moved away: a marker can be drawn and
  still blend into its background); where the goal projects and whether that is in the field of view.

* **A verdict per task**: ``observable``, ``object not visible`` or ``goal not visible``, and why.
  Something counts as visible from ``min_pixels`` pixels in at least one camera; every count is
  reported, so a reader can apply another threshold.

Run it with ``vla observability --suite mw10 --image-size 64 --compare-sizes '[128,224]'``: it writes
``OUT/<suite>/<task>.png`` (the cameras side by side at the training resolution, upscaled with
nearest-neighbour), ``contact_sheet.png``, ``observability.json`` and ``observability.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eval.suites import get_suite
from eval.suites.metaworld import CAMERAS, MetaWorldEnv, MetaWorldSuite
from eval.suites.render import mujoco  # imported after the headless-GL defaults are set
from vla.utils.atomic import atomic_file

OBSERVABLE = "observable"
GOAL_NOT_VISIBLE = "goal not visible"
OBJECT_NOT_VISIBLE = "object not visible"

RIGID_TOL = 1e-5  # m: a rigidly carried point stays put in its body's frame up to float error
MARKER_TOL = 1e-3  # m: a site this close to the goal marks it (MetaWorld places some in float32)
PERTURBATIONS = 3  # joint perturbations that tell which bodies carry an object point
PERTURBATION_SCALE = 0.05  # rad or m per joint dof: far beyond RIGID_TOL, small enough to stay sane
AWAY = np.array([0.0, 0.0, -1e4])  # where a marker goes to render the frame without it (beyond any far plane)


@dataclass
class ObservabilityConfig:
    suite: str = "mw10"  # a MetaWorld suite: mw-easy, mw10, mw50
    image_size: int = 64  # the training resolution: frames are saved at it
    compare_sizes: list[int] = field(default_factory=lambda: [128, 224])  # also measured (not saved): is size why?
    cameras: list[str] = field(default_factory=list)  # default: the suite's own
    tasks: list[str] = field(default_factory=list)  # env names (default: all of the suite's)
    episode: int = 0  # the evaluation init state rendered and measured
    goal_episodes: int = 3  # init states compared to tell a fixed, anchored or free goal (>= 2)
    min_pixels: int = 4  # visible from this many pixels (a 2x2 patch; fewer is a blended dot)
    min_contrast: int = 64  # a marker changes an RGB pixel when some channel moves by this much (of 255): a quarter
    # of the range, so the faint fringe that multisampling blends around a 1-px marker does not count as marker
    upscale: int = 4  # nearest-neighbour factor of the saved frames
    out: str = "docs/img/observability"

    def validate(self) -> None:
        """Called by the entry point (draccus builds a default instance first, so not __post_init__)."""
        for name in ("image_size", "min_pixels", "min_contrast", "upscale"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if any(s < 1 for s in self.compare_sizes):
            raise ValueError(f"--compare-sizes must all be >= 1; got {self.compare_sizes}")
        if self.goal_episodes < 2:
            raise ValueError(
                f"--goal-episodes must be >= 2 (a goal is fixed or not across init states); got {self.goal_episodes}"
            )
        if self.episode < 0:
            raise ValueError(f"--episode must be >= 0; got {self.episode}")

    @property
    def sizes(self) -> list[int]:
        return [self.image_size] + [s for s in dict.fromkeys(self.compare_sizes) if s != self.image_size]


@dataclass(frozen=True)
class TaskNeeds:
    """What a task needs to be seen, as MuJoCo ids of its model (the same at every image size)."""

    objects: tuple[tuple[int, ...], ...]  # per object point MetaWorld reports: the bodies carrying it
    goal: tuple[float, float, float]  # MetaWorld's goal position in the measured init state
    goal_fixed: bool  # the same goal in every compared init state
    anchors: tuple[int, ...]  # bodies the goal is rigidly fixed to across init states (not when fixed)
    markers: tuple[int, ...]  # sites at the goal position


@dataclass
class CameraView:
    """One camera's measurement of a task's needs at one resolution."""

    camera: str
    object_pixels: list[int]  # per object
    anchor_pixels: int
    marker_drawn: bool  # some marker is in the scene MuJoCo draws (group on, alpha > 0)
    marker_pixels: int  # segmentation pixels of the markers
    marker_rgb_pixels: int  # RGB pixels the markers change
    goal_pixel: tuple[float, float] | None  # (row, col) of the goal in the upright frame; None behind the camera
    goal_in_view: bool


def rigid_carriers(body_frames: list[tuple[np.ndarray, np.ndarray]], points: list[np.ndarray]) -> tuple[int, ...]:
    """Bodies in whose frame ``points[k]`` is the same point in every snapshot ``body_frames[k] = (xpos, xmat)``.

    ``xpos`` is (nbody, 3) and ``xmat`` (nbody, 3, 3), as MuJoCo's ``data.xpos``/``data.xmat`` after kinematics.
    """
    local = np.stack(
        [
            np.einsum("bji,bj->bi", xmat, np.asarray(p, dtype=np.float64) - xpos)
            for (xpos, xmat), p in zip(body_frames, points, strict=True)
        ]
    )  # (K, nbody, 3): the point in each body's frame
    still = np.abs(local - local[0]).max(axis=(0, 2)) < RIGID_TOL
    return tuple(int(b) for b in np.flatnonzero(still))


def _body_frames(data: mujoco.MjData) -> tuple[np.ndarray, np.ndarray]:
    return data.xpos.copy(), data.xmat.reshape(-1, 3, 3).copy()


def object_carriers(env: MetaWorldEnv, rng: np.random.Generator) -> tuple[tuple[int, ...], ...]:
    """Per object point of the task, the bodies that carry it (see the module docstring).

    Leaves the simulator's positions perturbed: reset the env before rendering.
    """
    sim = env.sim
    model, data = sim.model, sim.data
    start = data.qpos.copy()
    frames, points = [], []
    for k in range(PERTURBATIONS):
        data.qpos[:] = start
        if k:
            mujoco.mj_integratePos(model, data.qpos, rng.normal(0.0, PERTURBATION_SCALE, model.nv), 1.0)
        mujoco.mj_kinematics(model, data)
        frames.append(_body_frames(data))
        # MetaWorld has no public call for its object positions; this is what its observation holds. A copy:
        # some envs return a view of ``data`` that the next perturbation would overwrite.
        points.append(np.array(sim._get_pos_objects(), dtype=np.float64).reshape(-1, 3))
    carriers = []
    for i in range(points[0].shape[0]):
        bodies = rigid_carriers(frames, [p[i] for p in points])
        if not bodies:
            raise ValueError(
                f"task {env.task.name!r}: object {i} at {points[0][i].round(3).tolist()} moves with no body"
            )
        carriers.append(bodies)
    return tuple(carriers)


def goal_markers(data: mujoco.MjData, goal: np.ndarray) -> tuple[int, ...]:
    """Sites at the goal position (within MARKER_TOL)."""
    return tuple(int(s) for s in np.flatnonzero(np.linalg.norm(data.site_xpos - goal, axis=1) < MARKER_TOL))


def find_needs(env: MetaWorldEnv, episode: int, goal_episodes: int) -> TaskNeeds:
    """Objects, goal, anchors and markers of ``env``'s task; leaves the env reset to ``episode``."""
    n = env.task.num_episodes
    if not (episode < n and goal_episodes <= n):
        raise IndexError(
            f"task {env.task.name!r} has {n} init states; asked for episode {episode} and {goal_episodes} to compare"
        )
    frames, goals = [], []
    for ep in [e for e in range(goal_episodes) if e != episode] + [episode]:  # the measured one last
        env.reset(ep)
        frames.append(_body_frames(env.sim.data))
        goals.append(np.array(env.sim._get_pos_goal(), dtype=np.float64))  # a copy, as above
    goal = goals[-1]
    fixed = bool(np.abs(np.stack(goals) - goal).max() < RIGID_TOL)
    anchors = () if fixed else rigid_carriers(frames, goals)
    markers = goal_markers(env.sim.data, goal)
    objects = object_carriers(env, np.random.default_rng(0))
    env.reset(episode)  # undo the perturbations
    return TaskNeeds(objects, tuple(float(x) for x in goal), fixed, anchors, markers)


def _rgb_pixels_changed_by_markers(env: MetaWorldEnv, camera: str, markers: tuple[int, ...], min_contrast: int) -> int:
    """RGB pixels that differ by ``min_contrast`` (any channel) when the markers are moved out of the scene."""
    if not markers:
        return 0
    data = env.sim.data
    with_markers = env.render_camera(camera).astype(np.int16)
    placed = data.site_xpos[list(markers)].copy()
    data.site_xpos[list(markers)] = AWAY
    try:
        without = env.render_camera(camera).astype(np.int16)
    finally:
        data.site_xpos[list(markers)] = placed
    return int((np.abs(with_markers - without).max(axis=-1) >= min_contrast).sum())


def measure_camera(env: MetaWorldEnv, needs: TaskNeeds, camera: str, min_contrast: int) -> CameraView:
    """Pixels of the task's objects, anchors and goal markers in one camera, at the env's resolution."""
    model = env.sim.model
    seg = env.segment_camera(camera)
    geom = seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM
    pixel_body = np.where(geom, model.geom_bodyid[np.where(geom, seg[..., 0], 0)], -1)
    site_pixels = np.where(seg[..., 1] == mujoco.mjtObj.mjOBJ_SITE, seg[..., 0], -1)
    drawn = env.drawn_in_camera(camera)
    row, col, depth = env.project_to_camera(camera, np.asarray(needs.goal))
    size = seg.shape[0]
    in_front = depth > 0
    return CameraView(
        camera=camera,
        object_pixels=[int(np.isin(pixel_body, bodies).sum()) for bodies in needs.objects],
        anchor_pixels=int(np.isin(pixel_body, needs.anchors).sum()) if needs.anchors else 0,
        marker_drawn=any((int(mujoco.mjtObj.mjOBJ_SITE), s) in drawn for s in needs.markers),
        marker_pixels=int(np.isin(site_pixels, needs.markers).sum()) if needs.markers else 0,
        marker_rgb_pixels=_rgb_pixels_changed_by_markers(env, camera, needs.markers, min_contrast),
        goal_pixel=(round(row, 1), round(col, 1)) if in_front else None,
        goal_in_view=bool(in_front and 0 <= row < size and 0 <= col < seg.shape[1]),
    )


def judge(needs: TaskNeeds, views: list[CameraView], names: dict[str, list[str]], min_pixels: int) -> tuple[str, str]:
    """The task's verdict and why, from its camera views (visible: ``min_pixels`` in some camera)."""
    for i, bodies in enumerate(names["objects"]):
        shown = max(v.object_pixels[i] for v in views)
        if shown < min_pixels:
            return OBJECT_NOT_VISIBLE, f"object {i} ({', '.join(bodies)}) shows {shown} px at most (< {min_pixels})"
    if needs.goal_fixed:
        return OBSERVABLE, "the goal is the same in every init state (learnable without seeing it)"
    anchor_px = max(v.anchor_pixels for v in views)
    if needs.anchors and anchor_px >= min_pixels:
        return OBSERVABLE, f"the goal is fixed to {', '.join(names['anchors'])}, seen with {anchor_px} px"
    marker_px = max(v.marker_rgb_pixels for v in views)
    if marker_px >= min_pixels:
        return OBSERVABLE, f"the goal marker ({', '.join(names['markers'])}) changes {marker_px} px"
    if not needs.markers:
        why = "nothing is drawn at the goal"
    elif not any(v.marker_drawn for v in views):
        why = f"the goal marker ({', '.join(names['markers'])}) is not drawn (site group hidden or alpha 0)"
    elif not any(v.goal_in_view for v in views):
        why = "the goal is outside every camera's field of view"
    elif max(v.marker_pixels for v in views) == 0:
        why = "the goal marker is hidden behind other objects"
    else:
        why = f"the goal marker is too small: it changes {marker_px} px at most (< {min_pixels})"
    if needs.anchors:
        why += f"; the bodies it is fixed to ({', '.join(names['anchors'])}) show {anchor_px} px"
    return GOAL_NOT_VISIBLE, why


def _names(model: mujoco.MjModel, needs: TaskNeeds) -> dict[str, list]:
    def body(b: int) -> str:
        return model.body(b).name or f"body {b}"

    return {
        "objects": [[body(b) for b in bodies] for bodies in needs.objects],
        "anchors": [body(b) for b in needs.anchors],
        "markers": [model.site(s).name or f"site {s}" for s in needs.markers],
    }


def labelled_strip(frames: dict[str, np.ndarray], title: str, upscale: int):
    """The cameras side by side, each upscaled by ``upscale`` (nearest neighbour) and named; ``title`` on top."""
    from PIL import Image, ImageDraw

    line = 14  # px per text line of PIL's default font
    panels = {c: np.repeat(np.repeat(f, upscale, axis=0), upscale, axis=1) for c, f in frames.items()}
    h = max(p.shape[0] for p in panels.values())
    w = sum(p.shape[1] for p in panels.values())
    img = Image.new("RGB", (w, h + 2 * line), "white")
    draw = ImageDraw.Draw(img)
    draw.text((2, 0), title, fill="black")
    x = 0
    for camera, panel in panels.items():
        img.paste(Image.fromarray(panel), (x, line))
        draw.text((x + 2, h + line), f"{camera} ({CAMERAS[camera][0]}), {frames[camera].shape[0]} px", fill="black")
        x += panel.shape[1]
    return img


def contact_sheet(images: list, columns: int = 3):
    """The task images in a grid, in order."""
    from PIL import Image

    columns = min(columns, len(images))
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for k, img in enumerate(images):
        sheet.paste(img, ((k % columns) * w, (k // columns) * h))
    return sheet


def _suite(cfg: ObservabilityConfig, size: int) -> MetaWorldSuite:
    overrides = {"image_size": size, "task_names": list(cfg.tasks)}
    if cfg.cameras:
        overrides["cameras"] = tuple(cfg.cameras)
    suite = get_suite(cfg.suite, **overrides)
    if not isinstance(suite, MetaWorldSuite):
        raise ValueError(f"--suite {cfg.suite!r}: observability measures MetaWorld suites (mw-easy, mw10, mw50)")
    return suite


def observe_task(cfg: ObservabilityConfig, suites: dict[int, MetaWorldSuite], index: int) -> tuple[dict, dict]:
    """One task at every size: its needs (found once, at the training size), per-size views and verdicts,
    and its frames at the training size."""
    task = suites[cfg.image_size].tasks[index]
    entry: dict = {"task": task.name}
    with suites[cfg.image_size].make_env(index) as env:
        needs = find_needs(env, cfg.episode, cfg.goal_episodes)  # leaves the env in init state cfg.episode
        names = _names(env.sim.model, needs)
        entry["goal_kind"] = "fixed" if needs.goal_fixed else "anchored" if needs.anchors else "free"
        entry["needs"] = {**asdict(needs), **{f"{k}_names": v for k, v in names.items()}}
        entry["sizes"] = {str(cfg.image_size): _judged_views(cfg, env, needs, names)}
        frames = {c: env.render_camera(c) for c in env.cameras}
    for size in cfg.sizes[1:]:
        with suites[size].make_env(index) as env:
            env.reset(cfg.episode)
            entry["sizes"][str(size)] = _judged_views(cfg, env, needs, names)
    return entry, frames


def _judged_views(cfg: ObservabilityConfig, env: MetaWorldEnv, needs: TaskNeeds, names: dict) -> dict:
    views = [measure_camera(env, needs, c, cfg.min_contrast) for c in env.cameras]
    verdict, why = judge(needs, views, names, cfg.min_pixels)
    return {"verdict": verdict, "why": why, "cameras": [asdict(v) for v in views]}


def observe(cfg: ObservabilityConfig) -> dict:
    """Measure every task of ``cfg.suite`` at every size; write frames, contact sheet, JSON and markdown."""
    cfg.validate()
    suites = {size: _suite(cfg, size) for size in cfg.sizes}
    first = suites[cfg.image_size]
    out = Path(cfg.out) / cfg.suite
    out.mkdir(parents=True, exist_ok=True)
    tasks, images = [], []
    for index, task in enumerate(first.tasks):
        entry, frames = observe_task(cfg, suites, index)
        verdict = entry["sizes"][str(cfg.image_size)]["verdict"]
        img = labelled_strip(frames, f"{task.name}: {verdict} at {cfg.image_size} px", cfg.upscale)
        with atomic_file(out / f"{task.name}.png") as tmp:
            img.save(tmp, optimize=True)
        tasks.append(entry)
        images.append(img)
    with atomic_file(out / "contact_sheet.png") as tmp:
        contact_sheet(images).save(tmp, optimize=True)
    report = {
        "suite": cfg.suite,
        "episode": cfg.episode,
        "image_size": cfg.image_size,
        "sizes": cfg.sizes,
        "cameras": list(first.cameras),
        "min_pixels": cfg.min_pixels,
        "min_contrast": cfg.min_contrast,
        "tasks": tasks,
    }
    with atomic_file(out / "observability.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_file(out / "observability.md") as tmp:
        tmp.write_text(markdown_report(report))
    return report


def task_verdicts(suite: str, cameras: list[str], image_size: int, tasks: list[str] | None = None) -> dict[str, dict]:
    """Each task's verdict and why through ``cameras`` at ``image_size`` (a policy's own), nothing written:
    ``{task: {"verdict": ..., "why": ...}}``, for reports that must not average an unseeable task silently."""
    cfg = ObservabilityConfig(
        suite=suite, image_size=image_size, compare_sizes=[], cameras=list(cameras), tasks=list(tasks or [])
    )
    cfg.validate()
    suites = {image_size: _suite(cfg, image_size)}
    verdicts = {}
    for index in range(len(suites[image_size].tasks)):
        entry, _ = observe_task(cfg, suites, index)
        judged = entry["sizes"][str(image_size)]
        verdicts[entry["task"]] = {"verdict": judged["verdict"], "why": judged["why"]}
    return verdicts


def observable_average(success: dict[str, float], verdicts: dict[str, dict]) -> tuple[float | None, list[str]]:
    """Mean success over the tasks the cameras can show, and the tasks left out (not observable).
    None when no task is observable. Every task of ``success`` needs a verdict."""
    missing = sorted(set(success) - set(verdicts))
    if missing:
        raise KeyError(f"no observability verdict for task(s) {missing}")
    left_out = [t for t in success if verdicts[t]["verdict"] != OBSERVABLE]
    seen = [rate for t, rate in success.items() if t not in left_out]
    return (sum(seen) / len(seen) if seen else None), left_out


def markdown_report(report: dict) -> str:
    """A verdict table (one row per task, one verdict column per size) and the per-camera counts behind it."""
    sizes = report["sizes"]
    lines = [
        f"# Observability: {report['suite']} (init state {report['episode']}, cameras {', '.join(report['cameras'])})",
        "",
        f"Visible from {report['min_pixels']} px in some camera. Goal kinds: fixed (the same in every init state), "
        "anchored (rigidly fixed to bodies that move with the init state), free (shown by a marker only).",
        "",
        "| task | goal | " + " | ".join(f"{s} px" for s in sizes) + f" | why (at {sizes[0]} px) |",
        "|---|---|" + "---|" * len(sizes) + "---|",
    ]
    for t in report["tasks"]:
        verdicts = " | ".join(t["sizes"][str(s)]["verdict"] for s in sizes)
        lines.append(f"| {t['task']} | {t['goal_kind']} | {verdicts} | {t['sizes'][str(sizes[0])]['why']} |")
    lines += [
        "",
        "Per camera: object pixels (per object), pixels of the bodies the goal is fixed to, goal marker pixels "
        "(segmentation / RGB pixels it changes), whether the marker is drawn, where the goal projects (row, col).",
        "",
        "| task | size | camera | object px | anchor px | marker px (seg / rgb) | marker drawn | goal at | in view |",
        "|---|---:|---|---|---:|---|---|---|---|",
    ]
    for t in report["tasks"]:
        for s in sizes:
            for v in t["sizes"][str(s)]["cameras"]:
                at = "behind" if v["goal_pixel"] is None else f"({v['goal_pixel'][0]:.1f}, {v['goal_pixel'][1]:.1f})"
                lines.append(
                    f"| {t['task']} | {s} | {v['camera']} | {', '.join(map(str, v['object_pixels']))} | "
                    f"{v['anchor_pixels']} | {v['marker_pixels']} / {v['marker_rgb_pixels']} | "
                    f"{'yes' if v['marker_drawn'] else 'no'} | {at} | {'yes' if v['goal_in_view'] else 'no'} |"
                )
    return "\n".join(lines) + "\n"
