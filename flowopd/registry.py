"""One registry mechanism: named entries that are objects or lazy ``"module:attribute"`` strings, imported on first use.

Suites, objectives, prompt worlds, backbones, tasks and weight sets are
registries of this kind, so the core names a world's pieces (the mini suite,
the mini backbone) without importing the world. A name already taken by
another entry is refused; an unknown name gets a "did you mean" line.

A registry with an entry-point group also takes plugins: installed
distributions that declare ``name = "module:attribute"`` in that group
(``flowopd.suites`` for suites). A plugin that reuses a taken name is skipped
with one warning line naming its distribution; one whose entry cannot be
imported fails only when it is used, in one line naming the distribution.
"""

from __future__ import annotations

import difflib
import importlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata as importlib_metadata
from typing import Any, Generic, TypeVar

from flowopd.errors import ConfigError, PluginWarning

T = TypeVar("T")


def resolve_target(target: str) -> Any:
    """``"package.module:attribute"`` (or ``module:Class.attribute``) -> the attribute, imported."""
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise ConfigError(f"registry entry {target!r} is not 'module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _same_entry(known: Any, entry: Any) -> bool:
    """The same entry twice, or a lazy string and the object it names (a decorator running when its module is imported)."""
    if known is entry or known == entry:
        return True
    lazy, obj = (known, entry) if isinstance(known, str) else (entry, known)
    return isinstance(lazy, str) and lazy == f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


class Registry(Mapping[str, T], Generic[T]):
    """A name -> entry mapping in registration order; string entries are resolved (imported) on first access."""

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T | str] | None = None,
        error: type[Exception] = ConfigError,
        entry_point_group: str | None = None,
        check: Callable[[str, Any], T] | None = None,
        quote_names: bool = False,
        unknown_hint: str | None = None,
    ):
        """``check(name, obj)`` validates a resolved entry (and may return a replacement); ``quote_names`` writes names as
        ``'x'`` in the "did you mean" line; ``unknown_hint`` replaces the list of every name when nothing is close."""
        self.kind = kind
        self.error = error
        self.entry_point_group = entry_point_group
        self.check = check
        self.quote_names = quote_names
        self.unknown_hint = unknown_hint
        self.plugin_errors: list[str] = []
        self._entries: dict[str, T | str] = {}
        self._sources: dict[str, str] = {}
        self._discovered = entry_point_group is None
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T | str, source: str = "builtin") -> None:
        """Add ``name``; a name already taken by a different entry is refused."""
        known = self._entries.get(name)
        if known is not None and not _same_entry(known, entry):
            by = self._sources.get(name, "builtin")
            raise self.error(f"{self.kind} {name!r} is already registered (by {by}); register yours under another name")
        if known is None or not isinstance(entry, str):  # an object replaces the lazy string that names it
            self._entries[name] = entry
        self._sources.setdefault(name, source)

    def target(self, name: str) -> str:
        """The entry as ``module:attribute`` text (what a plugin declared), resolved or not."""
        entry = self._entries[name]
        return entry if isinstance(entry, str) else f"{getattr(entry, '__module__', '?')}:{getattr(entry, '__qualname__', '?')}"

    def source(self, name: str) -> str:
        """Who registered ``name``: ``builtin`` or the plugin's distribution."""
        self._discover()
        return self._sources[name]

    def _discover(self) -> None:
        """Register the entries installed distributions declare in the entry-point group (once)."""
        if self._discovered:
            return
        self._discovered = True
        for ep in importlib_metadata.entry_points(group=self.entry_point_group):
            dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
            if ep.name in self._entries:
                msg = (
                    f"plugin {dist} declares {self.kind} {ep.name!r}, already registered by {self._sources[ep.name]}; "
                    f"skipped (rename it in {dist})"
                )
                self.plugin_errors.append(msg)
                warnings.warn(msg, PluginWarning, stacklevel=3)
                continue
            self._entries[ep.name] = ep.value
            self._sources[ep.name] = dist

    def remove(self, name: str) -> None:
        """Drop ``name`` (a plugin's entry in a test, say); an unknown name is ignored."""
        self._entries.pop(name, None)
        self._sources.pop(name, None)

    def __setitem__(self, name: str, entry: T) -> None:
        """Replace ``name``'s entry outright (a test's ``monkeypatch.setitem``); ``register`` is the checked way in."""
        self._entries[name] = entry
        self._sources.setdefault(name, "builtin")

    def __delitem__(self, name: str) -> None:
        self.remove(name)

    def __getitem__(self, name: str) -> T:
        self._discover()
        entry = self._entries[name]
        if isinstance(entry, str):
            source = self._sources.get(name, "builtin")
            try:
                entry = resolve_target(entry)
                if self.check is not None:
                    entry = self.check(name, entry)
            except Exception as exc:
                if source == "builtin":
                    raise
                raise self.error(  # a plugin's broken entry: one line naming its distribution
                    f"{self.kind} {name!r} from plugin {source} cannot be loaded ({type(exc).__name__}: {exc}); fix or uninstall {source}"
                ) from None
            self._entries[name] = entry
        return entry

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def get_or_explain(self, name: str, extra: tuple[str, ...] = ()) -> T:
        """The entry ``name``, or one line naming close matches (or every name) and raising ``self.error``."""
        if name not in self:
            choices = [*self._entries, *extra]
            close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
            shown = [repr(c) if self.quote_names else c for c in close]
            hint = f"did you mean {', '.join(shown)}?" if close else (self.unknown_hint or f"available: {', '.join(choices)}")
            raise self.error(f"unknown {self.kind} {name!r}; {hint}")
        return self[name]
