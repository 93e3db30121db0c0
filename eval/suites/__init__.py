"""Simulated evaluation suites, registered by name (see ``base.py`` for the env API).

Importing this package registers every suite; simulators are imported lazily, when
a suite is built or an env is made, so listing suites stays cheap.
"""

from eval.suites import libero, libero_perturbed, metaworld  # noqa: F401  (registers the suites)
from eval.suites.base import Observation, StepResult, Suite, SuiteConfig, SuiteEnv, Task, get_suite, suite_names

__all__ = ["Observation", "StepResult", "Suite", "SuiteConfig", "SuiteEnv", "Task", "get_suite", "suite_names"]
