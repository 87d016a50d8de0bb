"""Memory states a pipeline reads and writes, what they have in common, and their registry.

A memory kind is registered with its parameter model and a factory; pipelines name it in
``memory.type``. Every memory can be snapshotted (JSON), cloned (an independent copy, e.g. to
score an edit on a copy of a bank) and diffed: ``mark()`` returns a cheap marker and
``diff(marker)`` what changed since, which traces record instead of whole copies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import TextTokenizer
from memfactory_core.resources import Resources


class MemoryKind(StrEnum):
    """The built-in memory kinds (others may be registered under any name)."""

    TEXT = "text"
    BANK = "bank"
    TOPIC = "topic"


class Memory(ABC):
    """A memory state."""

    kind: ClassVar[str]
    #: traces keep the whole state before and after a step (cheap small states, e.g. text)
    trace_full_state: ClassVar[bool] = False

    @abstractmethod
    def snapshot(self) -> Any:
        """A JSON-able copy of the current state."""

    @abstractmethod
    def clone(self) -> Memory:
        """An independent copy: editing it leaves this memory unchanged."""

    @abstractmethod
    def mark(self) -> Any:
        """A cheap marker of the current state, for :meth:`diff`."""

    @abstractmethod
    def diff(self, since: Any) -> Any:
        """JSON-able changes since ``mark()`` returned ``since``; None when nothing changed."""


@dataclass(frozen=True)
class MemoryBuildContext:
    """What a memory factory receives besides its parameters."""

    tokenizer: TextTokenizer | None
    resources: Resources


@dataclass(frozen=True)
class MemoryType:
    """A registered memory kind: its parameter model and how to create an empty one."""

    kind: str
    Params: type[BaseModel]
    create: Callable[[Any, MemoryBuildContext], Memory]
    description: str = ""


_MEMORY_TYPES: dict[str, MemoryType] = {}


def register_memory(
    kind: str,
    Params: type[BaseModel],
    create: Callable[[Any, MemoryBuildContext], Memory],
    description: str = "",
) -> MemoryType:
    """Make a memory kind available to pipelines as ``memory.type: <kind>``."""
    if Params.model_config.get("extra") != "forbid":
        raise TypeError(f"memory {kind!r}: its parameter model must forbid unknown keys")
    existing = _MEMORY_TYPES.get(kind)
    if existing is not None and existing.create is not create:
        raise TypeError(f"memory kind {kind!r} is already registered")
    mt = MemoryType(kind, Params, create, description)
    _MEMORY_TYPES[kind] = mt
    return mt


def memory_types() -> dict[str, MemoryType]:
    """Every registered memory kind (the built-ins are loaded on first use)."""
    from memfactory_core import memory  # noqa: F401  (registers the built-ins)

    return dict(sorted(_MEMORY_TYPES.items()))


def get_memory_type(kind: str) -> MemoryType:
    types = memory_types()
    if kind not in types:
        raise MemFactoryError(f"unknown memory type {kind!r}; available: {', '.join(types)}")
    return types[kind]


def create_memory(kind: str, params: BaseModel, context: MemoryBuildContext) -> Memory:
    """A new, empty memory of ``kind``."""
    return get_memory_type(kind).create(params, context)
