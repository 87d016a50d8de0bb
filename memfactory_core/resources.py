"""Shared objects a runtime binds by name (embedders, torch modules, ...), built once each.

A resource name is ``"<kind>:<name>"``, e.g. ``"embedder:minilm"``. A kind has a factory
registered with :func:`register_resource_kind`; components and memories ask their
:class:`Resources` for what they need, so one embedder serves every rollout of a run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memfactory_core.errors import MemFactoryError

_KINDS: dict[str, Callable[[str], Any]] = {}


def register_resource_kind(kind: str, factory: Callable[[str], Any]) -> None:
    """Make ``"<kind>:<name>"`` resources buildable: ``factory(name)`` returns one."""
    _KINDS[kind] = factory


def _builtin_kinds() -> None:
    if "embedder" not in _KINDS:
        from memfactory_core.retrieval.embedders import load_embedder

        register_resource_kind("embedder", load_embedder)


class Resources:
    """Named shared objects: given ones first, else built by their kind's factory, once."""

    def __init__(self, objects: dict[str, Any] | None = None) -> None:
        self._objects: dict[str, Any] = dict(objects or {})

    def get(self, name: str) -> Any:
        """The resource ``name`` (``"embedder:minilm"``), built on first use."""
        if name in self._objects:
            return self._objects[name]
        _builtin_kinds()
        kind, _, inner = name.partition(":")
        factory = _KINDS.get(kind)
        if factory is None or not inner:
            raise MemFactoryError(
                f"unknown resource {name!r}; names look like '<kind>:<name>' with a kind in: "
                f"{', '.join(sorted(_KINDS))}"
            )
        obj = factory(inner)
        self._objects[name] = obj
        return obj

    def put(self, name: str, obj: Any) -> None:
        """Bind ``name`` to an object built elsewhere (a test embedder, a loaded module)."""
        self._objects[name] = obj

    def embedder(self, name: str) -> Any:
        """Shorthand for ``get("embedder:" + name)``."""
        return self.get(f"embedder:{name}")

    def names(self) -> list[str]:
        return sorted(self._objects)
