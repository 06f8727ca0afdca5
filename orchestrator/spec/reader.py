"""Reading a spec file that nobody vetted: bounded before it is parsed, parsed without expansion.

A spec is YAML a user hands us, so reading it must be cheap whatever it holds. Before parsing: at
most MAX_SPEC_BYTES, UTF-8 text, no NUL bytes. While parsing (yaml.SafeLoader, which never builds
objects from tags): no aliases (`*name`, so no self-reference and no "billion laughs"), nesting at
most MAX_DEPTH levels, at most MAX_NODES values, no key given twice in a mapping, no integer of more
than MAX_INT_CHARS characters, no value PyYAML resolves but cannot build (a date `2001-13-45`). Each
refusal is a `SpecError` naming the file (and the line where there is one), raised in well under a
second.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.problems import SpecError

MAX_SPEC_BYTES = 256 * 1024  # the largest shipped spec is ~3 KB; a generated grid fits easily
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_INT_CHARS = 1000  # far above any real setting (10**100 is 101), far below Python's 4300-digit limit
_BRACKETS = re.compile(r"[\[\]{}]")


class _Refused(Exception):
    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader with bounds: no aliases, bounded depth and size, duplicate keys refused."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                f"YAML aliases are not allowed in a spec (*{event.anchor}); write the value out", event.start_mark
            )
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(
                f"more than {MAX_NODES} values; a spec is a handful of settings", self.peek_event().start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise _Refused(
                    "a mapping key must be a plain value, not a list or mapping", key_node.start_mark
                ) from None
            if key in seen:
                raise _Refused(f"key {str(key)[:60]!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node, deep=False):  # noqa: ANN001
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # a scalar of a resolved type that does not build
            raise _Refused(f"cannot read this value: {e}", node.start_mark) from None

    def construct_yaml_int(self, node):  # noqa: ANN001
        # Python refuses to convert a decimal string of more than 4300 digits (a ValueError deep in
        # the parser); refuse long integers here, with the line, before any conversion is tried.
        if len(node.value) > MAX_INT_CHARS:
            raise _Refused(
                f"an integer written with {len(node.value)} characters; at most {MAX_INT_CHARS}", node.start_mark
            )
        return super().construct_yaml_int(node)


_SpecLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _SpecLoader.construct_mapping)
_SpecLoader.add_constructor("tag:yaml.org,2002:int", _SpecLoader.construct_yaml_int)


def read_spec(path: str | Path) -> Any:
    """The spec file at `path`, parsed; SpecError for anything unreadable, too large or refused."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except IsADirectoryError:
        raise SpecError([f"{path}: is a directory, not a spec file"]) from None
    except OSError as e:
        raise SpecError([f"{path}: cannot read the spec: {e.strerror or e}"]) from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError([f"{path}: larger than {MAX_SPEC_BYTES // 1024} KiB; a spec is a handful of settings"])
    if b"\x00" in data:
        raise SpecError([f"{path}: a binary file (it holds NUL bytes), not a YAML spec"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError([f"{path}: not UTF-8 text (byte {e.start}); save the spec as UTF-8"]) from None
    return parse_spec_text(text, str(path))


def _prescan(text: str, where: str) -> None:
    """Refuse what is too big or too deep before the (pure-Python) parser spends time on it: every
    value takes a line or a comma, and flow collections nest by brackets. (A bracket inside a quoted
    string counts too; a spec with 32 of them in a row is not a real spec.)"""
    if text.count(",") + text.count("\n") > MAX_NODES:
        raise SpecError([f"{where}: more than {MAX_NODES} values; a spec is a handful of settings"])
    depth = 0
    for m in _BRACKETS.finditer(text):
        depth += 1 if m.group() in "[{" else -1
        if depth > MAX_DEPTH:
            line = text.count("\n", 0, m.start()) + 1
            raise SpecError([f"{where}:{line}: nested more than {MAX_DEPTH} levels deep"])


def parse_spec_text(text: str, where: str = "spec") -> Any:
    """Parse spec text with the bounds above; SpecError naming `where` and the line."""
    _prescan(text, where)
    loader = _SpecLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise SpecError([f"{_at(where, e.mark)}: {e}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError([f"{_at(where, mark)}: YAML syntax error: {problem}"]) from None
    except RecursionError:  # not reached with MAX_DEPTH, kept so no input can end in a traceback
        raise SpecError([f"{where}: nested too deeply"]) from None
    except (ValueError, OverflowError) as e:  # not reached (construct_object names the line); kept as above
        raise SpecError([f"{where}: cannot read a value: {e}"]) from None
    finally:
        loader.dispose()


def _at(where: str, mark: Any) -> str:
    return f"{where}:{mark.line + 1}" if mark is not None else where
