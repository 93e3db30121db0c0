"""Write, then rename: a failed write keeps the old file and leaves no partial one behind."""

from __future__ import annotations

import pytest

from vla.utils.atomic import atomic_file


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "results.json"
    with atomic_file(path) as tmp:
        assert tmp.suffix == ".json" and tmp.name.startswith(".")  # writers that pick a format by suffix work
        tmp.write_text("first")
    assert path.read_text() == "first"

    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "first"
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_every_written_file_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """fsync before os.replace: after a power loss the complete-looking name must not hold unwritten data."""
    import os

    from vla.utils import atomic

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    def replace(src, dst):
        events.append(f"replace {src}")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)

    with atomic.atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 10)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "state.pt").write_bytes(b"y")
    synced = [e for e in events if e.startswith("fsync")]
    assert any(e.endswith("model.safetensors") for e in synced) and any(e.endswith("state.pt") for e in synced)
    assert events.index(next(e for e in events if e.startswith("replace"))) > events.index(synced[-1])
    assert (tmp_path / "ckpt" / "sub" / "state.pt").read_bytes() == b"y"
