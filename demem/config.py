"""Frozen-dataclass configs built from plain dicts at the boundary (CLI, YAML, checkpoints).

`build(cls, data)` turns a nested dict into a nested frozen dataclass: unknown keys are a ValueError
naming the key path and the allowed keys; lists become tuples; each dataclass validates its own
ranges in `__post_init__`. `to_dict(obj)` is the inverse, so a config survives JSON round trips.
A dataclass may declare `_aliases = {"external_key": "field_name"}` for keys that are Python
keywords (DeMem's "lambda").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _aliases(cls: type) -> dict[str, str]:
    return dict(getattr(cls, "_aliases", {}))


def dataclass_in(tp: Any) -> type | None:
    """The dataclass inside a type hint such as `X` or `X | None`, if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def external_fields(cls: type) -> dict[str, tuple[str, Any]]:
    """Key as written in dicts (aliases applied) -> (field name, type hint), for dataclass `cls`."""
    inverse = {v: k for k, v in _aliases(cls).items()}
    hints = typing.get_type_hints(cls)
    return {inverse.get(f.name, f.name): (f.name, hints[f.name])
            for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}


def build(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass `cls` from `data`, recursively. Raises ValueError on unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    external = external_fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in external:
            raise ValueError(f"unknown key {path + key!r}; allowed: {', '.join(sorted(external))}")
        name, hint = external[key]
        sub = dataclass_in(hint)
        if sub is not None and isinstance(value, dict):
            value = build(sub, value, f"{path}{key}.")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a wrong type that the dataclass's own checks tripped over
        raise ValueError(f"{path or cls.__name__}: {e}") from e


def to_dict(obj: Any) -> dict[str, Any]:
    """Nested plain dict of a (nested) dataclass, with aliases applied and tuples as lists."""
    out: dict[str, Any] = {}
    inverse = {v: k for k, v in _aliases(type(obj)).items()}
    for f in dataclasses.fields(obj):
        if not f.init or f.name.startswith("_"):
            continue
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[inverse.get(f.name, f.name)] = v
    return out
