"""One registry per kind of component (datasets, models, defenses, attacks, objectives).

Following the pattern of timm's and fvcore's registries: components register under a unique
name, a duplicate name is an error, and an unknown name raises an error listing the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class Registry(Generic[T]):
    """A name -> component map for one kind of component.

    Args:
        kind: what the registry holds, used in error messages ("dataset", "model", ...).
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or (kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s")
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str, obj: T | None = None, **meta: Any
    ) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Names are case-insensitive and ``_``/``-`` are interchangeable.
        """
        key = _canonical(name)

        def _add(item: T) -> T:
            if key in self._items:
                raise DuplicateNameError(
                    f"{self.kind} {key!r} is already registered; pick another name"
                )
            self._items[key] = item
            self._meta[key] = dict(meta)
            return item

        if obj is not None:
            return _add(obj)
        return _add

    def get(self, name: str) -> T:
        """Return the component registered under ``name``.

        Raises:
            UnknownNameError: with the list of known names.
        """
        key = _canonical(name)
        if key not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known {self.plural}: {', '.join(self.names())}"
            )
        return self._items[key]

    def meta(self, name: str) -> dict[str, Any]:
        """Metadata given at registration (description, paper section, ...)."""
        self.get(name)
        return dict(self._meta[_canonical(name)])

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _canonical(name) in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
