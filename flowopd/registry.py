"""One registry mechanism: named entries that are objects or lazy ``"module:attribute"`` strings, imported on first use.

Suites, objectives, prompt worlds and backbones are registries of this kind,
so the core names a world's pieces (the mini suite, the mini backbone) without
importing the world. A name already taken by another entry is refused; an
unknown name gets a "did you mean" line.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from flowopd.errors import ConfigError

T = TypeVar("T")


def resolve_target(target: str) -> Any:
    """``"package.module:attribute"`` -> the attribute, imported."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ConfigError(f"registry entry {target!r} is not 'module:attribute'")
    return getattr(importlib.import_module(module), attr)


class Registry(Mapping[str, T], Generic[T]):
    """A name -> entry mapping in registration order; string entries are resolved (imported) on first access."""

    def __init__(self, kind: str, entries: Mapping[str, T | str] | None = None, error: type[Exception] = ConfigError):
        self.kind = kind
        self.error = error
        self._entries: dict[str, T | str] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T | str) -> None:
        """Add ``name``; a name already taken by a different entry is refused."""
        known = self._entries.get(name)
        if known is not None and known is not entry and known != entry:
            raise self.error(f"{self.kind} {name!r} is already registered; register yours under another name")
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        """Drop ``name`` (a plugin's entry in a test, say); an unknown name is ignored."""
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = self._entries[name] = resolve_target(entry)
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get_or_explain(self, name: str, extra: tuple[str, ...] = ()) -> T:
        """The entry ``name``, or one line naming close matches (or every name) and raising ``self.error``."""
        if name not in self._entries:
            choices = [*self._entries, *extra]
            close = difflib.get_close_matches(name, choices, n=2, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(choices)}"
            raise self.error(f"unknown {self.kind} {name!r}; {hint}")
        return self[name]
