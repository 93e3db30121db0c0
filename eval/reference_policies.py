"""Reference policies that bracket a suite's difficulty: ``oracle`` (scripted experts) and ``random``.

Why they run inside the env workers rather than in the main process: they act on
every step from the simulator's own state and never look at images, so running them
next to the simulator avoids a pipe round-trip and a render per step. An episode of
``--policy oracle`` renders nothing unless it is being recorded on video.

* ``oracle``: MetaWorld's scripted experts (``metaworld.policies.ENV_POLICY_MAP``),
  which read the raw (39,) MetaWorld observation, our ``env_state``. Only suites
  whose envs expose ``env_state()`` and whose tasks have an expert qualify (LIBERO
  has no scripted experts).
* ``random``: actions uniform in [-1, 1]^D, the normalized action box of both
  MetaWorld (xyz delta + gripper) and LIBERO (robosuite OSC_POSE input range),
  drawn from a generator seeded by the episode seed, so an episode's actions do not
  depend on which worker runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eval.suites.base import Suite, SuiteEnv

REFERENCE_POLICIES = ("oracle", "random")
ACTION_LOW, ACTION_HIGH = -1.0, 1.0


def _expert_map() -> dict:
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP


@dataclass(frozen=True)
class ReferencePolicy:
    """A picklable description of a reference policy; each worker builds its per-episode actor."""

    kind: str

    def __post_init__(self) -> None:
        if self.kind not in REFERENCE_POLICIES:
            raise KeyError(f"unknown reference policy {self.kind!r}; known: {', '.join(REFERENCE_POLICIES)}")

    def check(self, suite: Suite) -> None:
        """Fail before any env is built when the suite cannot run this policy."""
        if self.kind != "oracle":
            return
        experts = _expert_map()
        missing = [t.env_name for t in suite.tasks if t.env_name not in experts]
        if missing or not hasattr(suite, "env_state_dim"):
            raise ValueError(
                f"--policy oracle: suite {suite.name!r} has no scripted experts "
                f"(they exist only for MetaWorld suites; tasks without one: {missing[:5] or 'all'}). "
                "Use --policy random or --checkpoint."
            )

    def actor(self, env: SuiteEnv, seed: int, action_dim: int) -> Callable[[], np.ndarray]:
        """A closure returning the next ``(D,)`` action for the episode just reset in ``env``."""
        if self.kind == "random":
            rng = np.random.default_rng(seed)
            return lambda: rng.uniform(ACTION_LOW, ACTION_HIGH, size=action_dim).astype(np.float32)
        expert = _expert_map()[env.task.env_name]()

        def oracle() -> np.ndarray:
            obs39 = env.env_state().astype(np.float64)  # (39,) MetaWorld observation, no rendering
            return np.clip(expert.get_action(obs39), ACTION_LOW, ACTION_HIGH).astype(np.float32)

        return oracle
