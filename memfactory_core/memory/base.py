"""Memory states a pipeline reads and writes, and what they have in common."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from typing import Any


class MemoryKind(StrEnum):
    """The memory types a pipeline can declare."""

    TEXT = "text"
    BANK = "bank"
    TOPIC = "topic"


class Memory(ABC):
    """A memory state. ``snapshot`` gives a JSON-able view used by traces and the UI."""

    kind: MemoryKind

    @abstractmethod
    def snapshot(self) -> Any:
        """A JSON-able copy of the current state."""
