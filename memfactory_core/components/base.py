"""Components: the atomic steps of a memory lifecycle, registered by name.

A component declares a pydantic parameter model, the ports it reads and writes, the memory
kind it touches, its lifecycle stage and, when it calls an LLM, a default ``role`` naming the
policy it uses. The pipeline validator, the runtime, the CLI and the browser builder all work
from these declarations, so a new component needs no code elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import LLMBackend, SamplingParams, TextTokenizer
from memfactory_core.memory.base import Memory, MemoryKind


class Stage(StrEnum):
    """Where in the memory lifecycle a component acts."""

    SEGMENT = "segment"  # split the stream into units (chunks, turns, sessions)
    EXTRACT = "extract"
    WRITE = "write"
    MANAGE = "manage"
    RETRIEVE = "retrieve"
    RERANK = "rerank"
    REFLECT = "reflect"
    ANSWER = "answer"


class Port(StrEnum):
    """Typed values that flow between the slots of a lane."""

    DOCUMENT = "document"  # an episode's long text
    QUESTION = "question"
    CHUNK = "chunk"  # one unit of a segmented document
    FACTS = "facts"
    RETRIEVED = "retrieved"
    ANSWER = "answer"


class NoParams(BaseModel):
    """Parameter model of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class StepResult:
    """What one component did for one rollout; the runtime adds timing and memory diffs."""

    prompt: Any = None
    output: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RolloutState:
    """One rollout's working state: the typed values of its lane and its memory."""

    id: str
    values: dict[str, Any]
    memory: Memory
    #: token ids and texts of LLM calls, kept for training (one entry per trained turn)
    turns: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ComponentContext:
    """What the runtime gives a component when it is built."""

    llm: LLMBackend | None
    tokenizer: TextTokenizer
    sampling: SamplingParams


class Component(ABC):
    """Base class of every component. Subclasses set the class attributes and ``run``."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    #: memory kind the component reads or writes (None: it does not touch memory)
    memory: ClassVar[MemoryKind | None] = None
    #: default policy role for components that call an LLM (None: no LLM)
    default_role: ClassVar[str | None] = None

    def __init__(self, params: BaseModel, context: ComponentContext, role: str | None) -> None:
        self.params = params
        self.context = context
        self.role = role

    @property
    def uses_llm(self) -> bool:
        return self.default_role is not None

    @property
    def llm(self) -> LLMBackend:
        if self.context.llm is None:
            raise MemFactoryError(f"component {self.name!r} needs an LLM for role {self.role!r}")
        return self.context.llm

    @abstractmethod
    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        """Process one step of every rollout in ``batch`` at once; one result per rollout."""


class Segmenter(Component):
    """First slot of an ingest lane: turns an episode's context into a list of units."""

    stage = Stage.SEGMENT

    @abstractmethod
    def segment(self, state: RolloutState) -> tuple[list[Any], StepResult]:
        """Units of this rollout's context, and a trace record of the split."""

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        raise MemFactoryError(f"segmenter {self.name!r} is applied through segment()")


_REGISTRY: dict[str, type[Component]] = {}


def register(cls: type[Component]) -> type[Component]:
    """Class decorator that makes a component available by its ``name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} has no component name")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"component name {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def registry() -> dict[str, type[Component]]:
    """All registered components by name (built-ins are loaded on first use)."""
    from memfactory_core import components  # noqa: F401  (registers the built-ins)

    return dict(sorted(_REGISTRY.items()))


def get_component(name: str) -> type[Component]:
    comps = registry()
    if name not in comps:
        raise MemFactoryError(f"unknown component {name!r}; available: {', '.join(comps)}")
    return comps[name]


def describe(cls: type[Component]) -> dict[str, Any]:
    """A JSON-able description of a component: what the builder palette and forms use."""
    return {
        "name": cls.name,
        "stage": str(cls.stage),
        "description": cls.description,
        "inputs": [str(p) for p in cls.inputs],
        "outputs": [str(p) for p in cls.outputs],
        "memory": str(cls.memory) if cls.memory else None,
        "role": cls.default_role,
        "segmenter": issubclass(cls, Segmenter),
        "params_schema": cls.Params.model_json_schema(),
    }
