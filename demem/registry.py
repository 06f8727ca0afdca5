"""A tiny name -> object registry used for datasets, models, attacks and methods.

Registries turn strings from the command line or a YAML spec into objects at the boundary, and
an unknown name fails with the list of known ones instead of a KeyError deep in a run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; `register` is a decorator.

    Example:
        MODELS = Registry("model")

        @MODELS.register("small-cnn")
        def small_cnn(...): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def check(self, name: str) -> str:
        """Return `name` if it is registered, else raise the same ValueError as `get`."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return sorted(self._items)

    def registered(self) -> list[str]:
        """The names in the order they were registered."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
