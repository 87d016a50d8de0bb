"""Built-in components; importing this package registers them."""

from memfactory_core.components.answerer import BoxedAnswerer
from memfactory_core.components.base import (
    Component,
    ComponentContext,
    Port,
    RolloutState,
    Segmenter,
    Stage,
    StepResult,
    describe,
    get_component,
    register,
    registry,
)
from memfactory_core.components.chunker import TokenChunker
from memfactory_core.components.memory_writer import MemoryWriter

__all__ = [
    "BoxedAnswerer",
    "Component",
    "ComponentContext",
    "MemoryWriter",
    "Port",
    "RolloutState",
    "Segmenter",
    "Stage",
    "StepResult",
    "TokenChunker",
    "describe",
    "get_component",
    "register",
    "registry",
]
