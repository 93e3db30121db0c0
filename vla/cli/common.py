"""Shared CLI plumbing: friendly errors instead of tracebacks from deep inside the stack."""

from __future__ import annotations

import contextlib
import logging
import sys

from vla.config import ConfigError

log = logging.getLogger("vla")

HINTS = {
    FileNotFoundError: "check the path named above (datasets are LeRobot v3 folders with meta/info.json inside)",
    ConfigError: "run with --help to list the options",
    KeyError: "check the names (dataset keys, registry names) against the message",
    ValueError: "check the shapes and values named in the message",
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


@contextlib.contextmanager
def friendly_errors(command: str):
    """Turn expected failures into one message naming the cause and a fix; exit code 2."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"vla {command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            msg = (
                f"vla {command}: the GPU ran out of memory ({str(e).splitlines()[0]}). "
                "Lower train.batch_size (raise train.grad_accum to keep the global batch), enable "
                "policy.backbone.gradient_checkpointing=true, use bf16, or ZeRO-2/3 "
                "(accelerate launch --config_file configs/accelerate/zero2.yaml)."
            )
        else:
            hint = next((h for t, h in HINTS.items() if isinstance(e, t)), None)
            if hint is None:
                raise
            msg = f"vla {command}: {type(e).__name__}: {e}\n  hint: {hint}"
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            log.exception("details")
        print(msg, file=sys.stderr)
        raise SystemExit(2) from None
