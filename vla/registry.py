"""Name -> class registries with a helpful error on a miss.

Every pluggable family (backbones, heads, action tokenizers, suites) is a draccus
``ChoiceRegistry``: a config class registers itself under a name with
``@BaseConfig.register_subclass("name")`` and YAML/CLI pick it with ``type: name``.
``lookup`` is the one place that turns an unknown name into an error that lists
the known ones and suggests the closest.
"""

from __future__ import annotations

import difflib
from typing import TypeVar

import draccus

T = TypeVar("T")


def known_names(base: type[draccus.ChoiceRegistry]) -> list[str]:
    return sorted(base.get_known_choices().keys())


def lookup(base: type[draccus.ChoiceRegistry], name: str, what: str = "") -> type:
    """Return the class registered as ``name`` under ``base``, or raise naming the known choices."""
    choices = base.get_known_choices()
    if name in choices:
        return choices[name]
    label = what or base.__name__
    close = difflib.get_close_matches(name, list(choices), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise KeyError(f"unknown {label} {name!r}.{hint} Known: {', '.join(sorted(choices))}")
