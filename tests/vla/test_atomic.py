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
