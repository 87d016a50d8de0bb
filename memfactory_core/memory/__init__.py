"""Memory states (text memory, memory bank) and the registry of memory kinds."""

from memfactory_core.memory.bank import (
    BankEntry,
    BankOp,
    BankParams,
    EntryVersion,
    Fact,
    MemoryBank,
    OpKind,
)
from memfactory_core.memory.base import (
    Memory,
    MemoryBuildContext,
    MemoryKind,
    MemoryType,
    create_memory,
    get_memory_type,
    memory_types,
    register_memory,
)
from memfactory_core.memory.text import TextMemory, TextMemoryParams
from memfactory_core.memory.topic import TopicEntry, TopicMemory, TopicParams

__all__ = [
    "BankEntry",
    "BankOp",
    "BankParams",
    "EntryVersion",
    "Fact",
    "Memory",
    "MemoryBank",
    "MemoryBuildContext",
    "MemoryKind",
    "MemoryType",
    "OpKind",
    "TextMemory",
    "TextMemoryParams",
    "TopicEntry",
    "TopicMemory",
    "TopicParams",
    "create_memory",
    "get_memory_type",
    "memory_types",
    "register_memory",
]
