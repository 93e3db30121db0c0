"""Simulated evaluation suites: tasks with fixed initial states, and one env API.

A *suite* is a named list of :class:`Task` s (``get_suite("mw10")``,
``get_suite("libero_spatial")``). Suites are defined once, here and in the
per-family modules, and shared by evaluation (``eval/runner.py``) and scripted
data generation (``data_pipelines/demos``), so a task's instruction, cameras,
image size and renderer settings cannot drift between the two.

Conventions every suite follows:

* **Fixed initial states.** ``Task.init_states[i]`` is the *i*-th evaluation
  episode's initial state (MetaWorld: the object/goal vector of the task; LIBERO:
  a row of the official init file). ``SuiteEnv.reset(i)`` restores exactly that
  state, so every policy is scored on the same episodes. Demonstrations are
  generated from other, disjoint initial states.
* **Canonical observation** (what ``reset``/``step``/``render_obs`` return)::

      {"images": {cam: (Hi, Wi, 3) uint8, upright},  # cam names from Suite.cameras
       "state": (S,) float32,                        # proprioception, S = Suite.state_dim
       "instruction": str,                            # the task's natural-language goal
       "env_state": (E,) float32}                     # optional privileged state (MetaWorld)

  Images are upright (sky up, no mirror); each suite documents the flips that
  takes. Key names coming from a simulator never leave the suite adapter.
* **Actions** are ``(D,)`` float arrays, ``D = Suite.action_dim``, in the
  simulator's units (MetaWorld: 4 dims in [-1, 1]; LIBERO: 7-dim delta EEF).
* **Rendering on demand.** Rendering is ~95 % of a step on CPU. ``step(a,
  render=False)`` advances physics only and returns ``obs=None``; the runner asks
  for images only on steps where the policy takes a new observation (the last
  step of each action chunk) via ``render=True``. A suite may take its images
  inside the step (LIBERO: when robosuite samples its observations), so an
  observation is asked for by the step that produces it.
* **Episode end.** ``step`` reports ``success`` (the simulator's own success
  signal, a Python bool) and ``done = success or steps >= task.max_steps``.
  Stepping past ``max_steps`` raises; stepping after success is allowed (scripted
  demos record a few steps after success).
* **Processes.** A :class:`Suite` is a small picklable object; each worker process
  calls ``make_env`` itself, so every env owns its own simulator and GL context.
  Call ``close()`` (or use ``with``): MuJoCo's EGL context otherwise prints an
  error at interpreter exit.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, NamedTuple

import draccus
import numpy as np

from vla.registry import known_names, lookup

Observation = dict[str, Any]  # see the module docstring for the keys


@dataclass(frozen=True)
class Task:
    """One task of a suite.

    ``name`` is unique within the suite; ``env_name`` is the simulator's id
    (MetaWorld env name, LIBERO task name). ``init_states`` has one picklable
    entry per evaluation episode; its meaning is the suite's own (MetaWorld: a dict with
    ``seed`` and ``rand_vec``; LIBERO: the official flattened MuJoCo state).
    """

    name: str
    env_name: str
    instruction: str
    max_steps: int
    init_states: tuple[Any, ...]

    @property
    def num_episodes(self) -> int:
        return len(self.init_states)


class StepResult(NamedTuple):
    obs: Observation | None  # None when step(render=False)
    reward: float
    success: bool
    done: bool


class SuiteEnv(abc.ABC):
    """One simulator instance bound to one task. Not thread-safe; one per process."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.steps = 0  # steps taken since the last reset

    @abc.abstractmethod
    def reset(self, episode_index: int) -> Observation:
        """Restore ``task.init_states[episode_index]`` and return the rendered observation."""

    @abc.abstractmethod
    def step(self, action: np.ndarray, render: bool = True) -> StepResult:
        """Apply one ``(D,)`` action; render cameras only when ``render``."""

    @abc.abstractmethod
    def render_obs(self) -> Observation:
        """The current observation with its images (MetaWorld renders them now; LIBERO gives the last step's,
        which must have run with ``render=True``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the simulator and its GL context."""

    def _check_episode_index(self, episode_index: int) -> None:
        n = self.task.num_episodes
        if not 0 <= episode_index < n:
            raise IndexError(f"task {self.task.name!r} has {n} fixed init states; got episode_index={episode_index}")

    def _advance(self, success: bool) -> bool:
        """Count a step and return ``done``; refuse to run past the task's step limit."""
        if self.steps >= self.task.max_steps:
            raise RuntimeError(
                f"task {self.task.name!r}: step {self.steps + 1} exceeds max_steps={self.task.max_steps}; call reset()"
            )
        self.steps += 1
        return bool(success) or self.steps >= self.task.max_steps

    def __enter__(self) -> SuiteEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Suite(abc.ABC):
    """A named list of tasks plus the means to build their environments."""

    name: str
    tasks: list[Task]
    cameras: tuple[str, ...]  # canonical camera names, in the order policies see them
    image_size: int  # square images, Hi = Wi
    state_dim: int
    action_dim: int

    @abc.abstractmethod
    def make_env(self, task_index: int) -> SuiteEnv:
        """Create the env for ``tasks[task_index]`` in the calling process."""

    def task_index(self, name: str) -> int:
        names = [t.name for t in self.tasks]
        if name not in names:
            raise KeyError(f"suite {self.name!r} has no task {name!r}; tasks: {', '.join(names)}")
        return names.index(name)


@dataclass
class SuiteConfig(draccus.ChoiceRegistry):
    """Choice base: each suite name (``mw10``, ``libero_spatial`` ...) is a registered subclass."""

    @property
    def type(self) -> str:
        return self.get_choice_name(self.__class__)

    def build(self) -> Suite:
        raise TypeError(f"{type(self).__name__} must implement build()")


def get_suite(name: str, **overrides: Any) -> Suite:
    """Build the suite registered as ``name``; ``overrides`` set config fields (e.g. ``image_size=128``)."""
    cls = lookup(SuiteConfig, name, "suite")
    return cls(**overrides).build()


def suite_names() -> list[str]:
    return known_names(SuiteConfig)
