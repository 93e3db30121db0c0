"""Append-only JSON-lines logs (training metrics, evaluation episodes) read back after a kill.

A process killed mid-write leaves its last line cut short; that record is simply redone, so
reading drops it with a warning naming the file. A bad line anywhere else is not a kill but a
damaged file, and reading refuses it, naming the file and the line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def read_records(path: str | Path, check: Callable[[dict], object] | None = None) -> list[dict]:
    """The records of ``path``, one JSON object per non-empty line. ``check(record)`` may raise
    KeyError/TypeError/ValueError for a line that parses but is not a record of this log."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
            if check is not None:
                check(record)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if i == len(lines) - 1:
                log.warning("%s: dropping its last line, cut short (a kill mid-write): %r", path, line[:80])
                continue
            raise ValueError(f"{path}: line {i + 1} is not a valid record: {line[:120]!r}") from None
        records.append(record)
    return records
