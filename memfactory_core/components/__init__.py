"""Built-in components; importing this package registers them."""

from memfactory_core.components.answer_agent import AnswerAgent
from memfactory_core.components.answerer import BoxedAnswerer
from memfactory_core.components.bank_writer import AddAllWriter
from memfactory_core.components.base import (
    EPISODE_PORTS,
    PORTS,
    Component,
    ComponentContext,
    LLMComponent,
    Port,
    RolloutState,
    Segmenter,
    Stage,
    StepResult,
    describe,
    get_component,
    register,
    register_port,
    registry,
)
from memfactory_core.components.chunker import TokenChunker
from memfactory_core.components.citing_generator import CitingGenerator
from memfactory_core.components.conversation import SessionSegmenter, TurnSegmenter
from memfactory_core.components.facts import FactExtractor, GivenFacts
from memfactory_core.components.memory_manager import MemoryManager, parse_ops
from memfactory_core.components.memory_writer import MemoryWriter
from memfactory_core.components.reflection import ProspectiveReflection
from memfactory_core.components.reranker import Reranker
from memfactory_core.components.retriever import Retriever
from memfactory_core.components.topic_retriever import TopicRetriever

__all__ = [
    "EPISODE_PORTS",
    "PORTS",
    "AddAllWriter",
    "AnswerAgent",
    "BoxedAnswerer",
    "CitingGenerator",
    "Component",
    "ComponentContext",
    "FactExtractor",
    "GivenFacts",
    "LLMComponent",
    "MemoryManager",
    "MemoryWriter",
    "Port",
    "ProspectiveReflection",
    "Reranker",
    "Retriever",
    "RolloutState",
    "Segmenter",
    "SessionSegmenter",
    "Stage",
    "StepResult",
    "TokenChunker",
    "TopicRetriever",
    "TurnSegmenter",
    "describe",
    "get_component",
    "parse_ops",
    "register",
    "register_port",
    "registry",
]
