"""A tiny name -> object registry used for datasets, models, attacks and methods, filled by the
built-ins on import and by installed plugins through Python entry points.

Registries turn strings from the command line or a YAML spec into objects at the boundary, and
an unknown name fails with the list of known ones instead of a KeyError deep in a run.

Plugins. A registry with an entry-point `group` (``demem.models``, ``demem.methods``,
``demem.datasets``, ``demem.mia``) reads that group of every installed distribution the first time a
name is looked up: each entry point's name is the registered name and its object the entry (checked
by the registry's `adapt`). Only packages installed in the environment run code this way; a spec
names registered names and nothing else. A plugin that fails to import, fails its check, takes a
name a built-in has, or takes a name another distribution also registers is not registered; the
name then raises one `PluginError` naming the distribution(s), and every other name keeps working.
`origin(name)` says where a name comes from ("built-in", or "plugin <distribution> <version>").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")

BUILTIN = "built-in"
# What a plugin may call its entries: the names end up in labels, group ids and file names.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PluginError(ValueError):
    """A plugin entry that could not be registered; the message names the distribution."""


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name'] or dist.name} {dist.version}"


class Registry(Generic[T]):
    """Maps names to objects; `register` is a decorator.

    Args:
        kind: what the entries are, for messages ("model").
        group: the entry-point group plugins register under (None: built-ins only).
        adapt: turns a plugin's entry-point object into the registered object, raising TypeError or
            ValueError when it does not meet the contract (default: taken as it is).

    Example:
        MODELS = Registry("model", group="demem.models")

        @MODELS.register("small-cnn")
        def small_cnn(...): ...
    """

    def __init__(self, kind: str, group: str | None = None, adapt: Callable[[Any, str], T] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._adapt = adapt
        self._items: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._broken: dict[str, PluginError] = {}
        self._loaded = group is None

    def register(self, name: str, origin: str = BUILTIN) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and origin == BUILTIN and self._origins[name] != BUILTIN:
                # a built-in registered after the plugins were read: the built-in wins
                self._broken[name] = PluginError(
                    f"{self.kind} {name!r} from {self._origins[name]} has the name of a built-in {self.kind}; "
                    "the built-in is kept: the plugin must use another name"
                )
                del self._items[name]
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._origins[name] = origin
            return obj

        return deco

    # --- plugins ----------------------------------------------------------------------------------

    def _load_plugins(self) -> None:
        """Register this group's entry points, once; a bad one is recorded in `problems`, not raised."""
        if self._loaded:
            return
        self._loaded = True  # first: an entry that looks names up while loading does not recurse
        by_name: dict[str, list[metadata.EntryPoint]] = {}
        for ep in metadata.entry_points(group=self.group):
            by_name.setdefault(ep.name, []).append(ep)
        for name, eps in sorted(by_name.items()):
            dists = sorted({_distribution(ep) for ep in eps})
            if len(eps) > 1:
                self._broken[name] = PluginError(
                    f"{self.kind} {name!r} is registered by several plugins ({'; '.join(dists)}, entry-point "
                    f"group {self.group}): uninstall all but one"
                )
                continue
            (ep,) = eps
            where = f"plugin {dists[0]} (entry point {ep.name} = {ep.value} in group {self.group})"
            if name in self._items:
                self._broken[name] = PluginError(
                    f"{self.kind} {name!r} from {where} has the name of a built-in {self.kind}; the built-in is "
                    "kept: the plugin must use another name"
                )
                continue
            if not NAME.fullmatch(name):
                self._broken[name] = PluginError(
                    f"{self.kind} {name!r} from {where}: a name must be letters, digits, '.', '_' or '-' "
                    "(at most 64, starting with a letter or digit)"
                )
                continue
            try:
                obj = ep.load()
                if self._adapt is not None:
                    obj = self._adapt(obj, name)
            except Exception as e:  # noqa: BLE001 - any failure of a plugin's import is that plugin's
                first = (str(e).strip().splitlines() or [""])[0][:300]
                self._broken[name] = PluginError(
                    f"{self.kind} {name!r} from {where} could not be loaded: {type(e).__name__}: {first}"
                )
                continue
            self.register(name, origin=f"plugin {dists[0]}")(obj)

    def problems(self) -> list[str]:
        """One message per plugin entry that could not be registered."""
        self._load_plugins()
        return [str(self._broken[n]) for n in sorted(self._broken)]

    def origin(self, name: str) -> str:
        """'built-in' or 'plugin <distribution> <version>'; raises like `get` for an unknown name."""
        self.get(name)
        return self._origins[name]

    def reload_plugins(self) -> None:
        """Forget the plugin entries and read the entry points again (for tests that install one)."""
        for name in [n for n, o in self._origins.items() if o != BUILTIN]:
            del self._items[name], self._origins[name]
        self._broken.clear()
        self._loaded = self.group is None

    # --- lookups ----------------------------------------------------------------------------------

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            if name in self._broken:
                raise self._broken[name] from None
            broken = f" (plugins that failed to load: {', '.join(sorted(self._broken))})" if self._broken else ""
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}{broken}") from None

    def check(self, name: str) -> str:
        """Return `name` if it is registered, else raise the same ValueError as `get`."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def registered(self) -> list[str]:
        """The names in the order they were registered (built-ins first, then plugins)."""
        self._load_plugins()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(sorted(self._items))
