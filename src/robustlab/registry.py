"""One registry pattern for every named part: attacks, universal attacks, architectures,
datasets, defenses and protocols.

A part registers itself where it is defined (timm's ``@register_model``)::

    ATTACKS = Registry[type[Attack]]("attack")

    @ATTACKS.register()          # the name: the class's ``name`` attribute
    class PGD(Attack):
        name = "pgd"

``REGISTRY.get(name)`` looks a part up (a one-line error lists the names otherwise),
``REGISTRY.names(pattern)`` lists them (shell patterns, as ``timm.list_models``), and
``robustlab list`` and the command line's checks read the same registries: there is no other
list of names to keep.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named parts of one kind (``kind`` names it in errors: "unknown attack 'x'")."""

    def __init__(self, kind: str, *, attribute: str = "name") -> None:
        self.kind, self.attribute = kind, attribute
        self._parts: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated part under ``name`` (default: its attribute
        ``attribute``, e.g. a class's ``name``); a second part of one name is an error."""

        def add(part: T) -> T:
            self.add(name if name is not None else str(getattr(part, self.attribute)), part)
            return part

        return add

    def add(self, name: str, part: T) -> None:
        if name in self._parts:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._parts[name] = part

    def get(self, name: str) -> T:
        """The part called ``name``, or a one-line error listing the names."""
        if name not in self._parts:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}")
        return self._parts[name]

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the shell ``pattern``, sorted."""
        return sorted(n for n in self._parts if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"
