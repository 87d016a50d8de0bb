"""Memory states: text memory now; memory bank and topic memory share the same interface."""

from memfactory_core.memory.base import Memory, MemoryKind
from memfactory_core.memory.text import TextMemory, TextMemoryParams

__all__ = ["Memory", "MemoryKind", "TextMemory", "TextMemoryParams"]
