"""MetaWorld (3.x, v3 tasks) suites: ``mw-easy``, ``mw10`` (MT10) and ``mw50`` (MT50).

Conventions (shared with ``data_pipelines/demos/metaworld.py``, which records
scripted demonstrations through these same envs):

* **Initial states.** A MetaWorld episode is fixed by the task's ``rand_vec``
  (object and goal positions). Evaluation rand_vecs are stored, per suite, in
  ``init_states/metaworld/<suite>.json`` (50 per task). They were drawn the way
  MetaWorld's own benchmarks draw them (``env.reset()`` with unfrozen rand_vec, so
  each env's rejection rules apply) from seeds ``EVAL_SEED_BASE + 1000 *
  mt50_index + episode``. Demonstrations use seeds below ``EVAL_SEED_BASE``
  (:func:`demo_seed`), so the two sets never share an initial state.
  ``write_init_state_files()`` rewrites the files (deterministically):
  ``python -c "from eval.suites.metaworld import write_init_state_files as w; w()"``.
* **Observation.** ``images``: ``image`` is the third-person ``corner2`` camera
  moved to ``(0.75, 0.075, 0.7)`` as in LeRobot's MetaWorld env and datasets; it is
  mounted upside down in the model, so its frames are rotated 180 degrees (both
  axes flipped) to come out upright. ``wrist`` is ``gripperPOV``, used as rendered.
  ``state`` is (4,): hand xyz + gripper opening in [0, 1]. ``env_state`` is
  MetaWorld's full (39,) observation with the goal visible (MT convention):
  privileged, for scripted experts and state-based baselines.
* **Action** (4,): xyz delta of the hand (scaled by 1/100 m) and gripper effort,
  all in [-1, 1].
* **Success**: ``info["success"]`` of MetaWorld's step.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import ClassVar

import numpy as np

from eval.suites.base import Observation, StepResult, Suite, SuiteConfig, SuiteEnv, Task
from eval.suites.render import CameraRenderer  # sets MUJOCO_GL before metaworld imports mujoco
from vla.utils.atomic import atomic_file

INIT_STATES_DIR = Path(__file__).parent / "init_states" / "metaworld"
EVAL_SEED_BASE = 1_000_000_000  # evaluation seeds are >= this; demo seeds are below
EVAL_EPISODES = 50  # init states per task, as in LIBERO

# canonical camera name -> (MetaWorld camera, axes to flip so the frame is upright)
CAMERAS: dict[str, tuple[str, tuple[int, ...]]] = {
    "image": ("corner2", (0, 1)),
    "wrist": ("gripperPOV", ()),
    "top": ("topview", ()),
    "behind": ("behindGripper", ()),
}
CORNER2_POS = (0.75, 0.075, 0.7)  # LeRobot's placement: the whole table and robot in view

# Hand-written instructions for all 50 v3 tasks (MetaWorld ships none). Dict order = MT50 order.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "pick the block out of the red bin and place it in the blue bin",
    "box-close-v3": "pick up the lid and close the box with it",
    "button-press-topdown-v3": "push the button down from the top",
    "button-press-topdown-wall-v3": "push the button down from the top, reaching over the wall",
    "button-press-v3": "push the button forward from the front",
    "button-press-wall-v3": "push the button forward, reaching around the wall",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the coffee mug out from under the machine",
    "coffee-push-v3": "push the coffee mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the nut up off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "turn the door lock down to lock it",
    "door-open-v3": "open the door by pulling its handle",
    "door-unlock-v3": "turn the door lock up to unlock it",
    "hand-insert-v3": "move the hand into the hole in the table",
    "drawer-close-v3": "push the drawer closed",
    "drawer-open-v3": "pull the drawer open",
    "faucet-open-v3": "turn the faucet handle to the left to open it",
    "faucet-close-v3": "turn the faucet handle to the right to close it",
    "hammer-v3": "pick up the hammer and hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the peg up out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-insert-side-v3": "pick up the peg and insert it into the hole from the side",
    "peg-unplug-side-v3": "pull the peg out of the hole sideways",
    "soccer-v3": "push the ball into the goal",
    "stick-push-v3": "grab the stick and use it to push the bottle to the goal",
    "stick-pull-v3": "grab the stick and use it to pull the bottle to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "push the puck backward to the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach the goal position over the wall",
    "shelf-place-v3": "pick up the block and place it on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the edge of the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
# Five tasks the scripted experts solve every time well within 150 steps (see the report
# of data_pipelines.demos.metaworld), for quick end-to-end checks.
EASY = ("reach-v3", "button-press-topdown-v3", "drawer-close-v3", "window-close-v3", "handle-press-v3")

SUITE_TASKS: dict[str, tuple[str, ...]] = {"mw-easy": EASY, "mw10": MT10, "mw50": tuple(INSTRUCTIONS)}
SUITE_MAX_STEPS: dict[str, int] = {"mw-easy": 150, "mw10": 300, "mw50": 500}


def mt50_index(env_name: str) -> int:
    if env_name not in INSTRUCTIONS:
        raise KeyError(f"{env_name!r} is not a MetaWorld v3 task; known: {', '.join(INSTRUCTIONS)}")
    return list(INSTRUCTIONS).index(env_name)


def eval_seed(env_name: str, episode: int) -> int:
    return EVAL_SEED_BASE + 1000 * mt50_index(env_name) + episode


def demo_seed(seed: int, env_name: str, episode: int) -> int:
    """Seed of a demonstration episode; always below EVAL_SEED_BASE, hence never an eval seed.

    Distinct for every (seed, task, episode) with ``0 <= seed < 200`` and ``episode < 100_000``.
    """
    s = (seed * 50 + mt50_index(env_name)) * 100_000 + episode
    if not (0 <= episode < 100_000 and 0 <= s < EVAL_SEED_BASE):
        raise ValueError(f"demo seed out of range (seed={seed}, episode={episode}): must stay below {EVAL_SEED_BASE}")
    return s


def _task_object(env_name: str, rand_vec: np.ndarray):
    """A ``metaworld.types.Task`` that freezes ``rand_vec`` with the goal observable (MT convention)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS, MT50_V3_ARGS_KWARGS
    from metaworld.types import Task as MWTask

    kwargs = {k: v for k, v in MT50_V3_ARGS_KWARGS[env_name]["kwargs"].items() if k != "task_id"}
    data = dict(kwargs, rand_vec=np.asarray(rand_vec, dtype=np.float64), env_cls=ALL_V3_ENVIRONMENTS[env_name])
    data["partially_observable"] = False
    return MWTask(env_name=env_name, data=pickle.dumps(data))


def sample_rand_vec(env, env_name: str, seed: int) -> np.ndarray:
    """Draw a valid initial state of ``env`` from ``seed`` (as MetaWorld's benchmarks do, via reset).

    MetaWorld has no public call for this; ``metaworld._make_tasks`` does the same with
    these private flags. Sampling through ``reset`` applies each env's own rejection
    rules (e.g. goal not too close to the object), so a frozen ``rand_vec`` is valid.
    """
    env.set_task(_task_object(env_name, np.zeros(env._random_reset_space.low.size)))
    env._freeze_rand_vec, env.seeded_rand_vec = False, True
    env.seed(seed)
    env.reset()
    rand_vec = np.array(env._last_rand_vec, dtype=np.float64)
    env._freeze_rand_vec, env.seeded_rand_vec = True, False
    return rand_vec


def make_init_states(env_names: tuple[str, ...], episodes: int = EVAL_EPISODES) -> dict[str, list[dict]]:
    """The evaluation init states of ``env_names``: ``{env: [{"seed", "rand_vec"}, ...]}``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    out = {}
    for name in env_names:
        env = ALL_V3_ENVIRONMENTS[name]()
        out[name] = []
        for ep in range(episodes):
            seed = eval_seed(name, ep)
            out[name].append({"seed": seed, "rand_vec": sample_rand_vec(env, name, seed).tolist()})
        env.close()
    return out


@cache
def load_init_states(suite: str) -> dict[str, list[dict]]:
    path = INIT_STATES_DIR / f"{suite}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate it with eval.suites.metaworld.write_init_state_files()")
    return json.loads(path.read_text())["tasks"]


class MetaWorldEnv(SuiteEnv):
    """One MetaWorld v3 env with its own offscreen renderer."""

    def __init__(self, task: Task, cameras: tuple[str, ...], image_size: int) -> None:
        super().__init__(task)
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise KeyError(f"unknown MetaWorld camera(s) {unknown}; known: {', '.join(CAMERAS)}")
        self.cameras = cameras
        self._env = ALL_V3_ENVIRONMENTS[task.env_name]()
        model = self._env.model
        model.cam_pos[model.camera("corner2").id] = CORNER2_POS
        flips = {CAMERAS[c][0]: CAMERAS[c][1] for c in cameras}
        self._renderer = CameraRenderer(model, image_size, image_size, flips) if cameras else None
        self._obs39: np.ndarray | None = None  # (39,) last MetaWorld observation

    def reset(self, episode_index: int) -> Observation:
        self._check_episode_index(episode_index)
        return self.reset_to(self.task.init_states[episode_index]["rand_vec"])

    def reset_to(self, rand_vec) -> Observation:
        """Reset to an explicit initial state (scripted demos use their own, disjoint ones)."""
        self._env.set_task(_task_object(self.task.env_name, np.asarray(rand_vec)))
        self._obs39, _ = self._env.reset()
        self.steps = 0
        return self.render_obs()

    def sample_init_state(self, seed: int) -> np.ndarray:
        """A valid initial state (rand_vec) drawn from ``seed``; pass it to :meth:`reset_to`."""
        return sample_rand_vec(self._env, self.task.env_name, seed)

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (4,):
            raise ValueError(f"MetaWorld action: expected shape (4,), got {action.shape}")
        self._obs39, reward, _, _, info = self._env.step(action)
        success = bool(info["success"])
        done = self._advance(success)
        return StepResult(self.render_obs() if render else None, float(reward), success, done)

    def env_state(self) -> np.ndarray:
        """MetaWorld's (39,) observation without rendering: what the scripted experts read."""
        return self._obs39.astype(np.float32)

    @property
    def sim(self):
        """The MetaWorld env underneath (MuJoCo ``model`` and ``data``, goal and object positions), for tools
        that inspect the scene (eval/observability.py); policies and experts never read it."""
        return self._env

    def render_camera(self, camera: str) -> np.ndarray:
        """One camera's upright (H, W, 3) uint8 frame of the current state, as in the observation."""
        return self._camera_renderer().render(self._env.data, self._mujoco_camera(camera))

    def segment_camera(self, camera: str) -> np.ndarray:
        """(H, W, 2) ``(objid, objtype)`` of each pixel of :meth:`render_camera`'s frame (see CameraRenderer)."""
        return self._camera_renderer().segment(self._env.data, self._mujoco_camera(camera))

    def drawn_in_camera(self, camera: str) -> set[tuple[int, int]]:
        """``(objtype, objid)`` of everything the camera's scene draws (hidden groups and alpha 0 are not)."""
        return self._camera_renderer().drawn(self._env.data, self._mujoco_camera(camera))

    def project_to_camera(self, camera: str, point: np.ndarray) -> tuple[float, float, float]:
        """``(row, col, depth)`` of a world point in :meth:`render_camera`'s upright frame."""
        return self._camera_renderer().project(self._env.data, self._mujoco_camera(camera), point)

    def _mujoco_camera(self, camera: str) -> str:
        if camera not in self.cameras:
            raise KeyError(f"camera {camera!r} is not rendered by this env; its cameras: {', '.join(self.cameras)}")
        return CAMERAS[camera][0]

    def _camera_renderer(self) -> CameraRenderer:
        if self._renderer is None:
            raise RuntimeError(f"task {self.task.name!r}: this env renders no cameras (made with cameras=())")
        return self._renderer

    def render_obs(self) -> Observation:
        images = {c: self.render_camera(c) for c in self.cameras}
        env_state = self.env_state()
        return {
            "images": images,  # {cam: (Hi, Wi, 3) uint8}
            "state": env_state[:4].copy(),  # (4,) hand xyz + gripper opening
            "instruction": self.task.instruction,
            "env_state": env_state,  # (39,)
        }

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()


@dataclass
class MetaWorldSuite(Suite):
    name: str
    tasks: list[Task]
    cameras: tuple[str, ...]
    image_size: int
    state_dim: int = 4
    action_dim: int = 4
    env_state_dim: int = 39

    def make_env(self, task_index: int) -> MetaWorldEnv:
        return MetaWorldEnv(self.tasks[task_index], self.cameras, self.image_size)


@dataclass
class MetaWorldSuiteConfig(SuiteConfig):
    """Fields shared by the MetaWorld suites; ``suite`` picks the task list."""

    suite: ClassVar[str]
    cameras: tuple[str, ...] = ("image", "wrist")
    image_size: int = 224
    max_steps: int | None = None  # override the suite's step limit (<= 500, MetaWorld's max_path_length)
    episodes: int | None = None  # use only the first N fixed init states per task
    task_names: list[str] = field(default_factory=list)  # restrict to these env names (default: all)

    def build(self) -> MetaWorldSuite:
        names = SUITE_TASKS[self.suite]
        if self.task_names:
            missing = [n for n in self.task_names if n not in names]
            if missing:
                raise KeyError(f"suite {self.suite!r} has no task(s) {missing}; tasks: {', '.join(names)}")
            names = tuple(n for n in names if n in self.task_names)
        max_steps = self.max_steps or SUITE_MAX_STEPS[self.suite]
        if not 0 < max_steps <= 500:
            raise ValueError(f"max_steps must be in (0, 500] (MetaWorld's max_path_length); got {max_steps}")
        states = load_init_states(self.suite)
        tasks = [
            Task(
                name=n,
                env_name=n,
                instruction=INSTRUCTIONS[n],
                max_steps=max_steps,
                init_states=tuple(states[n][: self.episodes]),
            )
            for n in names
        ]
        return MetaWorldSuite(self.suite, tasks, tuple(self.cameras), self.image_size)


@SuiteConfig.register_subclass("mw-easy")
@dataclass
class MWEasyConfig(MetaWorldSuiteConfig):
    suite: ClassVar[str] = "mw-easy"


@SuiteConfig.register_subclass("mw10")
@dataclass
class MW10Config(MetaWorldSuiteConfig):
    suite: ClassVar[str] = "mw10"


@SuiteConfig.register_subclass("mw50")
@dataclass
class MW50Config(MetaWorldSuiteConfig):
    suite: ClassVar[str] = "mw50"


def write_init_state_files(out_dir: Path = INIT_STATES_DIR) -> list[Path]:
    """(Re)write ``<suite>.json`` for every MetaWorld suite; deterministic."""
    out_dir.mkdir(parents=True, exist_ok=True)
    all_states = make_init_states(tuple(INSTRUCTIONS))
    paths = []
    for suite, names in SUITE_TASKS.items():
        doc = {
            "suite": suite,
            "about": "MetaWorld v3 evaluation init states (rand_vec per episode); see eval/suites/metaworld.py",
            "tasks": {n: all_states[n] for n in names},
        }
        path = out_dir / f"{suite}.json"
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=None, separators=(",", ":")))
        paths.append(path)
    return paths
