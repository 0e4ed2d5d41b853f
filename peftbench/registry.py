"""Registries of methods and tasks, fed by entry points (built-ins included) so plugins need no core change."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from importlib import metadata
from typing import Generic, TypeVar

from peftbench.errors import UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")

ADAPTER_GROUP = "peftbench.adapters"
TASK_GROUP = "peftbench.tasks"


def _entry_points(group: str) -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=group)


class Registry(Generic[T]):
    """Name -> object, loaded lazily from one entry-point group plus anything registered in code."""

    def __init__(self, group: str, kind: str) -> None:
        self.group = group
        self.kind = kind
        self._extra: dict[str, T] = {}
        self._cache: dict[str, T] = {}

    def _points(self) -> dict[str, metadata.EntryPoint]:
        points: dict[str, metadata.EntryPoint] = {}
        for ep in _entry_points(self.group):
            other = points.get(ep.name)
            # The same distribution can show up twice (editable install + path); only a real clash is an error.
            if other is not None and other.value != ep.value:
                raise UsageError(
                    f"duplicate {self.kind} name {ep.name!r}: {other.value} and {ep.value}; uninstall one of them"
                )
            points[ep.name] = ep
        return points

    def register(self, name: str, obj: T) -> None:
        if name in self._extra or name in self._points():
            raise UsageError(f"duplicate {self.kind} name {name!r}")
        self._extra[name] = obj

    def names(self) -> list[str]:
        return sorted(set(self._points()) | set(self._extra))

    def get(self, name: str) -> T:
        if name in self._extra:
            return self._extra[name]
        if name in self._cache:
            return self._cache[name]
        points = self._points()
        if name not in points:
            raise UsageError(unknown_name_message(self.kind, name, self.names()))
        try:
            obj = points[name].load()
        except UsageError:  # the plugin says what it is missing (an optional dependency) and how to get it
            raise
        except Exception as e:  # a broken plugin must not take the CLI down with a traceback
            raise UsageError(
                f"{self.kind} {name!r} could not be loaded from {points[name].value} ({type(e).__name__}: {e}); "
                f"reinstall the package that provides it"
            ) from None
        self._cache[name] = obj
        return obj

    def loadable(self) -> tuple[dict[str, T], dict[str, str]]:
        """Every name loaded, and apart the names that cannot be (name -> why): a listing shows what is here
        and says how to get the rest, instead of failing on the first plugin whose dependency is missing."""
        found: dict[str, T] = {}
        missing: dict[str, str] = {}
        for name in self.names():
            try:
                found[name] = self.get(name)
            except UsageError as e:
                missing[name] = str(e)
        return found, missing

    def clear_cache(self) -> None:
        self._cache.clear()


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown {kind} {name!r}; {hint}valid {kind}s: {', '.join(valid)}"


adapters: Registry = Registry(ADAPTER_GROUP, "method")
tasks: Registry = Registry(TASK_GROUP, "task")
