"""Write, then rename: a crash never leaves a directory that looks complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path``, on error it is deleted.

    The temporary name starts with a dot and ends in ``.partial`` so nothing globbing for
    checkpoints or datasets mistakes it for a finished one.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    tmp = partial_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, path, synced=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path``; on success it replaces ``path``, on error it is deleted.

    The temporary name keeps the suffix, so writers that pick a format from it (matplotlib,
    imageio) still work, and starts with a dot so nothing globbing for results picks it up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix}"
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def partial_sibling(path: str | Path) -> Path:
    """A fresh hidden ``.NAME.XXXXXXXX.partial`` path next to ``path`` (not created; the parent is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"


def move_into_place(tmp: Path, path: str | Path, synced: bool = False) -> None:
    """Rename the finished ``tmp`` to ``path``; an existing ``path`` is moved aside first and then
    deleted, so the swap is two renames and never a half-deleted directory."""
    path = Path(path)
    if not synced:
        fsync_tree(tmp)  # the data on disk before the name that says it is complete
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(path: str | Path) -> None:
    """Flush ``path`` (a file, or every file and folder under a folder) to disk: after a power loss a renamed
    name must not point at data the disk never received. A symbolic link is left alone."""
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return
    items = [path] if path.is_file() else [*sorted(p for p in path.rglob("*") if not p.is_symlink()), path]
    for item in items:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError as e:  # some FUSE/CIFS mounts cannot fsync a folder; its files are synced all the same
            if not (item.is_dir() and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
                raise
        finally:
            os.close(fd)
