"""One generic name → object registry, shared by targets, models, losses and data sources."""

from __future__ import annotations

import contextlib
import difflib
from typing import Callable, Generic, Iterator, TypeVar

from pipeline.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; duplicate names raise, unknown names list the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise ConfigError naming the valid choices."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            valid = ", ".join(sorted(self._entries))
            raise ConfigError(f"unknown {self.kind} {name!r}; valid: {valid}", hint) from None

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (a plug-in a test registered for itself); an unknown name raises
        ConfigError naming the valid ones."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    @contextlib.contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` under ``name`` for the block only (a duplicate name raises ValueError)."""
        self.register(name)(obj)
        try:
            yield obj
        finally:
            self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
