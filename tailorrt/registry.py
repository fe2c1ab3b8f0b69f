"""One registry shape for every kind of thing tailorrt has several of (methods, backbones, export kinds, dataset
sources): each is registered by name, once, in the module that defines it, and looked up by name; an unknown
name is one :class:`~tailorrt.errors.ConfigError` naming the known ones. (Runtime backends are found by name
too, as entry points of ``tailorrt.backends``: the core cannot import the training side that defines two of them.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from tailorrt.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Things of one kind by name, in registration order."""

    def __init__(self, what: str) -> None:
        self.what = what  # "backbone", "export kind", ...: how errors name the kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name`` (a name registered twice is a bug: ValueError)."""
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        """The item registered as ``name``, or a ConfigError naming the known ones."""
        if name not in self._items:
            raise ConfigError(f"unknown {self.what} {name!r}; choose one of {', '.join(self.names())}")
        return self._items[name]

    def find(self, name: str) -> T | None:
        """The item registered as ``name``, or None."""
        return self._items.get(name)

    def names(self) -> list[str]:
        return list(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
