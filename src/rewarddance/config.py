"""One run-config mechanism for every recipe: dataclass schema <- YAML file <- `key=value` overrides.

A recipe declares its settings as a dataclass (defaults, and a comment or docstring per
field); `load_config` starts from the defaults, applies a YAML file, then command-line
overrides `key=value` (nested dataclasses: `a.b=value`). Values are parsed as YAML scalars
(`lr=3e-4`, `lora=true`, `betas=[0.9,0.95]`) and checked against the field's type; an
unknown key or a wrong type is a `ConfigError` naming the key. `save_config` writes the
resolved config into the run directory.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Run:
    ...     lr: float = 1e-3
    ...     steps: int = 10
    >>> load_config(Run, overrides=["steps=20"])
    Run(lr=0.001, steps=20)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad setting; the message names the key."""


def _check(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to type `tp` where that is lossless (int -> float, str -> Path), else ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # e.g. an item of a list of sections
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of its keys, got {value!r}")
        section = tp()
        for k, v in value.items():
            _set(section, str(k), v, f"{key}.{k}")
        return section
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _check(value, arm, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, typing.get_args(tp)))}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return origin(_check(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:  # only float() of one string is inside: the value is not a number
            raise ConfigError(f"{key}: {value!r} is not a float") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # model=1 or a numeric run name stays a string
    if tp in (bool, int, float, str) and (not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{key}: {value!r} is not a {tp.__name__}")
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _set(obj: Any, dotted: str, value: Any, full: str | None = None) -> None:
    full = full or dotted
    head, _, rest = dotted.partition(".")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    if head not in fields:
        raise ConfigError(f"unknown key {full!r}; known: {', '.join(sorted(fields))}")
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{full}: {head!r} has no sub-keys")
        _set(current, rest, value, full)
    elif dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{full}: expected a mapping of its keys, got {value!r}")
        for k, v in value.items():
            _set(current, k, v, f"{full}.{k}")
    else:
        setattr(obj, head, _check(value, hints[head], full))


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=value' -> ('a.b', value parsed as a YAML scalar or flow list/mapping)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # an unparsable value is a plain string (e.g. a path with a colon)
    return key.strip(), value


def load_config(schema: type[T], config_file: str | os.PathLike | None = None,
                overrides: list[str] | tuple[str, ...] = (), base: dict[str, Any] | None = None) -> T:
    """Defaults of `schema`, then `base` (a named preset of keys, e.g. a recipe's --quick), then the YAML
    `config_file`, then `overrides` (`key=value` strings)."""
    cfg = schema()
    for k, v in (base or {}).items():
        _set(cfg, k, v)
    if config_file is not None:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
        for k, v in data.items():
            _set(cfg, str(k), v)
    for text in overrides:
        _set(cfg, *parse_override(text))
    return cfg


def config_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (paths as strings)."""
    def plain(v: Any) -> Any:
        if isinstance(v, os.PathLike):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (loadable again with `--config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    return path


def describe(schema: type) -> str:
    """One line per key: name, type, default (for `--help`)."""
    lines = []
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name}={default!r}  ({_name(hint)})")
    return "\n".join(lines)
