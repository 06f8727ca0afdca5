"""Frozen-dataclass configs built from plain dicts at the boundary (CLI, YAML, checkpoints).

`build(cls, data)` turns a nested dict into a nested frozen dataclass: unknown keys are a ValueError
naming the key path and the allowed keys; lists become tuples; each dataclass validates its own
ranges in `__post_init__`. `to_dict(obj)` is the inverse, so a config survives JSON round trips. The typed walker below
(`settings`, `type_problems`, `normalise`, `leaf_hint`, `json_schema`) is the one place that reads
field types, for run configs and experiment specs alike.
A dataclass may declare `_aliases = {"external_key": "field_name"}` for keys that are Python
keywords (DeMem's "lambda").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from demem.checks import is_int, is_number

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
    return {
        inverse.get(f.name, f.name): (f.name, hints[f.name])
        for f in dataclasses.fields(cls)
        if f.init and not f.name.startswith("_")
    }


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


# ---------------------------------------------------------------------------------------------------
# The typed walker: type checks, normalisation and JSON Schema of dataclass configs, one place for
# run configs and experiment specs alike.
# ---------------------------------------------------------------------------------------------------


def scalar_kinds(hint: Any) -> tuple[Any, ...] | None:
    """The member types of a scalar hint (`int`, `float | None`, `tuple[float, ...]`), else None."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    ok = {int, float, str, bool, type(None)}
    if all(a in ok or typing.get_origin(a) is tuple for a in args):
        return args
    return None


def fits(kind: Any, value: Any) -> bool:
    """Whether `value` (as loaded from YAML / JSON) is of scalar kind `kind`."""
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_int(value)
    if kind is float:
        return is_number(value, finite=True)
    if kind is str:
        return isinstance(value, str)
    if typing.get_origin(kind) is tuple:
        (elem, *_) = typing.get_args(kind) or (Any,)
        return isinstance(value, (list, tuple)) and all(fits(elem, v) for v in value)
    return True


def describe(kind: Any) -> str:
    """'an integer', 'a number', 'a list of numbers', ... for error messages."""
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    if typing.get_origin(kind) is tuple:
        (elem, *_) = typing.get_args(kind) or (Any,)
        return f"a list of {names.get(elem, 'values').removeprefix('an ').removeprefix('a ')}s"
    return names.get(kind, str(kind))


def settings(cls: type, tree: Any, prefix: str = ""):
    """Yield (parent dict, key, value, scalar kinds or None, dotted path) for every setting of `cls`
    present in a nested dict, descending into sections; unknown keys are skipped (they are `build`'s
    to report)."""
    if not isinstance(tree, dict):
        return
    fields = external_fields(cls)
    for key, value in list(tree.items()):
        if key not in fields:
            continue
        hint = fields[key][1]
        sub = dataclass_in(hint)
        if sub is not None:
            yield from settings(sub, value, f"{prefix}{key}.")
        else:
            yield tree, key, value, scalar_kinds(hint), f"{prefix}{key}"


def type_problems(cls: type, tree: Any, prefix: str = "") -> list[str]:
    """Settings of the wrong type in a nested dict for `cls`, each naming its key path.

    A dataclass's own checks compare values (epochs < 1) but accept 2.5 epochs, and YAML reads
    `1e-2` (no dot) as a string, so this typed check turns both into a clear message.
    """
    out: list[str] = []
    for _, _, value, kinds, path in settings(cls, tree, prefix):
        if kinds is None or any(fits(k, value) for k in kinds):
            continue
        msg = f"{path} must be {' or '.join(describe(k) for k in kinds)}, got {value!r}"
        if isinstance(value, str) and float in kinds and _parses_as_float(value):
            msg += " (YAML reads numbers like 1e-2 as text: write 1.0e-2)"
        out.append(msg)
    return out


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def normalise(cls: type, tree: dict) -> dict:
    """Cast integers given for float settings to float, in place (so 0 and 0.0 compare and hash alike)."""
    for parent, key, value, kinds, _ in settings(cls, tree):
        kinds = kinds or ()
        if float in kinds and int not in kinds and is_int(value):
            parent[key] = float(value)
        for kind in kinds:
            if typing.get_origin(kind) is tuple and typing.get_args(kind)[:1] == (float,) and isinstance(value, list):
                parent[key] = [float(v) if is_int(v) else v for v in value]
    return tree


def leaf_hint(cls: type, path: str, root: str) -> tuple[Any, str | None]:
    """(type hint of the setting at dotted `path` of `cls`, None), or (None, why the path is not a
    setting). `root` names `cls` in messages ("a run config")."""
    parts = path.split(".")
    hint: Any = None
    for i, part in enumerate(parts):
        fields = external_fields(cls)
        if part not in fields:
            where = ".".join(parts[:i]) or root
            return None, f"unknown key path; {where} has: {', '.join(sorted(fields))}"
        hint = fields[part][1]
        sub = dataclass_in(hint)
        last = i == len(parts) - 1
        if sub is None and not last:
            return None, f"unknown key path; {'.'.join(parts[: i + 1])} is a setting, not a section"
        if sub is not None and last:
            keys = ", ".join(sorted(external_fields(sub)))
            return None, f"names a section, not a setting; use one of its keys: {keys}"
        if sub is not None:
            cls = sub
    return hint, None


def _kind_schema(kind: Any) -> dict[str, Any]:
    if kind is type(None):
        return {"type": "null"}
    if typing.get_origin(kind) is tuple:
        (elem, *_) = typing.get_args(kind) or (Any,)
        return {"type": "array", "items": _kind_schema(elem) if elem is not Ellipsis else {}}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return {"type": simple[kind]} if kind in simple else {}


def json_schema(cls: type) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12 subset) of the dicts `build(cls, ...)` accepts: the keys as
    written (aliases applied), scalar types from the hints, nested sections, unknown keys refused.
    Ranges are the dataclasses' own `__post_init__` checks and are not repeated here."""
    props: dict[str, Any] = {}
    for key, (_, hint) in external_fields(cls).items():
        sub = dataclass_in(hint)
        if sub is not None:
            props[key] = json_schema(sub)
            if sub is not hint:  # X | None
                props[key] = {"anyOf": [props[key], {"type": "null"}]}
            continue
        kinds = scalar_kinds(hint)
        if kinds is None:
            props[key] = {}
        elif len(kinds) == 1:
            props[key] = _kind_schema(kinds[0])
        else:
            props[key] = {"anyOf": [_kind_schema(k) for k in kinds]}
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if cls.__doc__:
        schema["description"] = cls.__doc__.strip().splitlines()[0]
    return schema
