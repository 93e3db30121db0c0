"""Config parsing: YAML recipe + dotted CLI overrides into typed dataclasses (draccus).

Two conveniences on top of draccus, both about choice fields (backbone, head, suite):
- ``--policy.head.num_steps=5`` without ``--policy.head.type`` keeps the default (or the
  recipe's) head type instead of failing with "Expected a dict with a 'type' key".
- ``--config PATH`` is accepted as an alias of draccus' ``--config_path``.
Every parse error becomes a ``ConfigError`` whose message names the key at fault.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import TypeVar, get_type_hints

import draccus
import yaml

from vla.registry import lookup

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def at_least(name: str, value: float, low: float) -> None:
    """Refuse a setting below ``low`` (or NaN) with one line naming it; called from configs' ``__post_init__``."""
    if not value >= low:  # NaN fails too
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _choice_paths(cls: type, obj, prefix: str = "") -> dict[str, tuple[str, type]]:
    """Map dotted path -> (default choice name, registry) for every ChoiceRegistry field under ``cls``."""
    out: dict[str, tuple[str, type]] = {}
    if not dataclasses.is_dataclass(cls):
        return out
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        ftype = hints.get(f.name, f.type)
        value = getattr(obj, f.name, None)
        path = f"{prefix}{f.name}"
        if isinstance(ftype, type) and issubclass(ftype, draccus.ChoiceRegistry) and value is not None:
            out[path] = (ftype.get_choice_name(type(value)), ftype)
            out.update(_choice_paths(type(value), value, path + "."))
        elif isinstance(ftype, type) and dataclasses.is_dataclass(ftype) and value is not None:
            out.update(_choice_paths(ftype, value, path + "."))
    return out


def _yaml_get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _all_field_paths(cls: type, obj, prefix: str = "") -> list[str]:
    paths = []
    if not dataclasses.is_dataclass(cls):
        return paths
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name, None)
        paths.append(prefix + f.name)
        if value is not None and dataclasses.is_dataclass(value):
            paths += _all_field_paths(type(value), value, prefix + f.name + ".")
    return paths


def parse_config[T](cls: type[T], args: list[str]) -> T:
    """Parse ``args`` (``--config PATH`` and ``--a.b=value`` overrides) into ``cls``."""
    args = list(args)
    config_path = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--config", "--config_path") and i + 1 < len(args):
            config_path = args[i + 1]
            i += 2
            continue
        if a.startswith(("--config=", "--config_path=")):
            config_path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    recipe: dict = {}
    if config_path:
        p = Path(config_path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {config_path}")
        recipe = yaml.safe_load(p.read_text()) or {}
    default = cls()
    given = {a[2:].split("=", 1)[0] for a in rest if a.startswith("--")}
    choices = _choice_paths(cls, default)
    known = _all_field_paths(cls, default)
    for path, (default_name, _) in choices.items():
        if path + ".type" in given or _yaml_get(recipe, path + ".type") is not None:
            continue
        if any(g.startswith(path + ".") for g in given) or isinstance(_yaml_get(recipe, path), dict):
            rest.append(f"--{path}.type={default_name}")
    for g in given:
        if g not in known and not any(g.startswith(k + ".") for k in choices):
            close = difflib.get_close_matches(g, known, n=1)
            hint = f" Did you mean --{close[0]}?" if close else ""
            raise ConfigError(f"unknown config key --{g}.{hint}")
    for path, (_, registry) in choices.items():  # an unknown type: one line naming the known ones (not a usage dump)
        named = [a.partition("=")[2] for a in rest if a.startswith(f"--{path}.type=")]
        for name in [*named, _yaml_get(recipe, path + ".type")]:
            if name is not None and name not in registry.get_known_choices():
                try:
                    lookup(registry, name, f"--{path}.type")
                except KeyError as e:
                    raise ConfigError(e.args[0]) from None
    # A type switched on the command line (--policy.head.type=regression over a flow recipe) starts
    # from that type's defaults: the recipe's fields for the old type would not fit it.
    switched = False
    for a in rest:
        key, _, value = a[2:].partition("=")
        if key.endswith(".type") and isinstance(_yaml_get(recipe, key[: -len(".type")]), dict):
            node = _yaml_get(recipe, key[: -len(".type")])
            if node.get("type") not in (None, value):
                node.clear()
                switched = True
    if switched:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(recipe, f)
        config_path = f.name
    try:
        return draccus.parse(cls, config_path=config_path, args=rest)
    except SystemExit as e:  # argparse already printed its message naming the argument
        raise ConfigError(f"could not parse arguments {rest} (see the message above)") from e
    except Exception as e:  # draccus decoding errors: name the key, and the root cause it wrapped
        raise ConfigError(f"invalid config: {_root_cause(e)}") from e
    finally:
        if switched:
            Path(config_path).unlink(missing_ok=True)


def _root_cause(e: BaseException) -> str:
    """draccus wraps a __post_init__ error ("n_action_steps exceeds chunk_size") in a generic one."""
    messages = [str(e)]
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
        messages.append(f"{type(e).__name__}: {e}")
    return " <- ".join(reversed(messages[1:])) + (f" ({messages[0]})" if len(messages) > 1 else messages[0])


def to_dict(cfg) -> dict:
    return draccus.encode(cfg)


def from_dict[T](cls: type[T], raw: dict) -> T:
    try:
        return draccus.decode(cls, raw)
    except Exception as e:
        raise ConfigError(f"invalid {cls.__name__}: {e}") from e
