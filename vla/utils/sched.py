"""Keep a thread's CPU scheduling policy across a call into a library that changes it.

SVT-AV1 (``libsvtav1``, the AV1 encoder LeRobot encodes dataset videos with) switches the thread that
encodes to real-time ``SCHED_FIFO`` priority 99 whenever it may (as root, in containers and on CI runners),
and leaves it there. Every thread and process started afterwards inherits it: a data-generation process, the
training it launches, the simulator workers. On a 2-core machine such processes starve everything else, the
test runner and CI's watchdog included.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def scheduling_kept() -> Iterator[None]:
    """Restore the calling thread's scheduling policy and priority when the block ends."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            log.debug("restoring the scheduling policy a library changed (video encoder)")
            os.sched_setscheduler(0, policy, param)
