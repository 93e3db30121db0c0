"""Shared CLI plumbing: a failure prints one line naming the cause and a fix, and keeps its traceback.

The full traceback goes to a log file that the line names: ``error.log`` in the run's output directory
when the command has one (``FailureLog.run_dir``), else ``~/.cache/vla/logs/<command>-error.log``
(``$VLA_CACHE_DIR/logs``). ``--debug`` (anywhere on the command line) or ``VLA_DEBUG=1`` prints it on the
terminal too.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vla.config import ConfigError
from vla.utils.paths import user_cache_dir

DEBUG_ENV = "VLA_DEBUG"
ERROR_LOG = "error.log"  # inside a run's output directory

# Failures that print as one line, with a hint where there is a general one; anything else is a bug and
# keeps Python's own traceback on the terminal.
HINTS: dict[type[Exception], str | None] = {
    FileNotFoundError: "check the path named above",  # each message says what was looked for there
    ConfigError: "run with --help to list the options",
    KeyError: "check the names (dataset keys, registry names) against the message",
    ValueError: "check the shapes and values named in the message",
    RuntimeError: None,  # the stack's own say what the machine or the run lacks (a GPU, a worker that died)
}


def hyphens_to_underscores(argv: list[str]) -> list[str]:
    """``--init-from X`` and ``--init_from X`` are the same option (draccus wants underscores)."""
    out = []
    for a in argv:
        if a.startswith("--"):
            key, eq, value = a[2:].partition("=")
            a = "--" + key.replace("-", "_") + eq + value
        out.append(a)
    return out


def debug_requested() -> bool:
    """``VLA_DEBUG`` set to anything but 0/false/no/off (``--debug`` sets it): tracebacks on the terminal."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass
class FailureLog:
    """Where a failed command's traceback goes; the command sets ``run_dir`` once it knows its output folder."""

    command: str
    run_dir: str | Path | None = None

    def candidates(self) -> list[Path]:
        """The run's ``error.log`` when its folder exists (none is made for it), then the cache's log."""
        fallback = user_cache_dir("logs", f"{self.command}-error.log")
        if self.run_dir and Path(self.run_dir).is_dir():
            return [Path(self.run_dir) / ERROR_LOG, fallback]
        return [fallback]

    def write(self, text: str) -> Path | None:
        """Append ``text`` to the first writable candidate; its path, or None when none was writable."""
        for path in self.candidates():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(text)
                return path
            except OSError:
                continue
        return None


def report_failure(message: str, failures: FailureLog) -> None:
    """Print ``message`` for the exception being handled, and where its full traceback went."""
    trace = traceback.format_exc()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    path = failures.write(f"=== vla {failures.command} failed at {stamp}: {shlex.join(sys.argv)}\n{trace}\n")
    if debug_requested():
        print(trace, file=sys.stderr, end="")
    if path is not None:
        where = f"full traceback: {path}"
    else:
        where = f"the traceback could not be written to {', '.join(map(str, failures.candidates()))}"
    debug = "" if debug_requested() else f" (--debug or {DEBUG_ENV}=1 prints it here)"
    print(f"{message}\n  {where}{debug}", file=sys.stderr)


def _one_line(command: str, e: Exception) -> str | None:
    """The message for an expected failure; None for anything else (a bug: Python's traceback)."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return (
            f"vla {command}: the GPU ran out of memory ({str(e).splitlines()[0]}). "
            "Lower train.batch_size (raise train.grad_accum to keep the global batch), enable "
            "policy.backbone.gradient_checkpointing=true, use bf16, or ZeRO-2/3 "
            "(accelerate launch --config_file configs/accelerate/zero2.yaml)."
        )
    kind = next((t for t in HINTS if isinstance(e, t)), None)
    if kind is None:
        return None
    hint = HINTS[kind]
    return f"vla {command}: {type(e).__name__}: {e}" + (f"\n  hint: {hint}" if hint else "")


@contextlib.contextmanager
def friendly_errors(command: str) -> Iterator[FailureLog]:
    """Turn expected failures into one message naming the cause and a fix; exit code 2.

    Yields the :class:`FailureLog`: a command with an output folder sets its ``run_dir``.
    """
    failures = FailureLog(command)
    try:
        yield failures
    except KeyboardInterrupt:
        print(f"vla {command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001
        message = _one_line(command, e)
        if message is None:
            raise
        report_failure(message, failures)
        raise SystemExit(2) from None
