"""Where the stack keeps files a user never asked for by name (caches, simulator configs)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    """``$VLA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/vla`` (``~/.cache/vla``), joined with ``parts``.

    One root so a user can move or wipe everything the stack caches with one variable.
    """
    root = os.environ.get("VLA_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vla"
    return Path(root).expanduser().joinpath(*parts)
