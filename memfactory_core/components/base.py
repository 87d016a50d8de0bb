"""Components: the atomic steps of a memory lifecycle, registered by name.

A component declares a pydantic parameter model, the ports it reads and writes, the memory
kind it touches, its lifecycle stage and, when it calls an LLM, a default ``role`` naming the
policy it uses. The pipeline validator, the runtime, the CLI and the browser builder all work
from these declarations, so a new component needs no code elsewhere.

Ports are names of typed values; the built-in ones are in :class:`Port`, and
:func:`register_port` adds more. Components that call an LLM derive from
:class:`LLMComponent`; shared objects such as embedders come from ``context.resources``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import Generation, LLMBackend, Prompt, SamplingParams, TextTokenizer
from memfactory_core.memory.base import Memory
from memfactory_core.resources import Resources


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
    """The built-in typed values that flow between the slots of a lane."""

    DOCUMENT = "document"  # an episode's long text (str)
    CONVERSATION = "conversation"  # an episode's conversation (data.Conversation)
    QUESTION = "question"  # str
    CHUNK = "chunk"  # one unit of a segmented document (str)
    TURNS = "turns"  # one unit of a segmented conversation: a turn or a session (list[Turn])
    FACTS = "facts"  # list[memory.Fact]
    OPS = "ops"  # memory edits applied in this step (list[dict])
    RETRIEVED = "retrieved"  # retrieved memory entries, best first (list[dict])
    ANSWER = "answer"  # str


#: every port name with what it carries; episodes provide document and conversation
PORTS: dict[str, str] = {
    Port.DOCUMENT: "an episode's document text",
    Port.CONVERSATION: "an episode's conversation (sessions of turns)",
    Port.QUESTION: "the question being answered",
    Port.CHUNK: "one chunk of a segmented document",
    Port.TURNS: "the turns of one unit of a conversation (a turn or a session)",
    Port.FACTS: "facts extracted from the current unit",
    Port.OPS: "memory edits made for the current unit",
    Port.RETRIEVED: "memory entries retrieved for the question, best first",
    Port.ANSWER: "the final answer",
}
#: ports an episode fills before the ingest lane runs
EPISODE_PORTS: frozenset[str] = frozenset({Port.DOCUMENT, Port.CONVERSATION})


def register_port(name: str, description: str) -> str:
    """Declare a new port (e.g. ``"topics"``) that components may read and write."""
    if name in PORTS and PORTS[name] != description:
        raise TypeError(f"port {name!r} is already registered")
    PORTS[name] = description
    return name


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
    """What the runtime gives a component when it is built: the LLM bound to its role (if
    any), the main tokenizer, sampling settings, and shared resources (embedders, modules)."""

    llm: LLMBackend | None
    tokenizer: TextTokenizer
    sampling: SamplingParams
    resources: Resources = field(default_factory=Resources)


class Component(ABC):
    """Base class of every component. Subclasses set the class attributes and ``run``."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    description: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    #: memory kind the component reads or writes (None: it does not touch memory)
    memory: ClassVar[str | None] = None
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


class LLMComponent(Component):
    """A component that prompts its role's LLM once per rollout and reads the reply.

    Subclasses give ``prompt`` and ``read``; ``run`` generates for the whole batch in one call,
    records each LLM turn for training and fills the step's prompt, output and token counts.
    Components with another calling pattern use ``generate`` and ``record_turn`` directly.
    """

    default_role = "policy"

    def prompt(self, state: RolloutState) -> Prompt:
        """The chat prompt for one rollout."""
        raise NotImplementedError

    def read(self, state: RolloutState, prompt: Prompt, gen: Generation) -> StepResult:
        """Apply the reply to the rollout's state; return the step (output, extra)."""
        raise NotImplementedError

    def max_new_tokens(self, batch: list[RolloutState]) -> int:
        return int(getattr(self.params, "max_new_tokens", None) or 256)

    def generate(self, prompts: list[Prompt], max_new_tokens: int,
                 choices: list[list[str]] | None = None) -> list[Generation]:
        """One batched call of the role's LLM (``choices``: allowed replies per prompt, for
        backends that can constrain decoding)."""
        if not prompts:
            return []
        params = replace(self.context.sampling, max_new_tokens=max_new_tokens)
        if choices is None:
            return self.llm.generate(prompts, params)
        return self.llm.generate(prompts, params, choices)

    def record_turn(self, state: RolloutState, prompt: Prompt, gen: Generation,
                    **info: Any) -> None:
        """Keep an LLM turn (prompt and generation with token ids) for training."""
        state.turns.append({"component": self.name, "role": self.role, "prompt": prompt,
                            "generation": gen, **info})

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        prompts = [self.prompt(s) for s in batch]
        gens = self.generate(prompts, self.max_new_tokens(batch))
        results = []
        for state, prompt, gen in zip(batch, prompts, gens, strict=True):
            self.record_turn(state, prompt, gen)
            res = self.read(state, prompt, gen)
            res.prompt = prompt
            res.prompt_tokens = gen.prompt_tokens
            res.completion_tokens = gen.completion_tokens
            res.extra.setdefault("finish_reason", gen.finish_reason)
            results.append(res)
        return results


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
    _check_ports(cls)
    if cls.Params.model_config.get("extra") != "forbid":
        raise TypeError(f"component {name!r}: its parameter model must forbid unknown keys")
    _REGISTRY[name] = cls
    return cls


def registry() -> dict[str, type[Component]]:
    """All registered components by name (built-ins are loaded on first use)."""
    from memfactory_core import components  # noqa: F401  (registers the built-ins)

    return dict(sorted(_REGISTRY.items()))


def _check_ports(cls: type[Component]) -> None:
    unknown = [p for p in (*cls.inputs, *cls.outputs) if p not in PORTS]
    if unknown:
        raise TypeError(f"component {cls.__qualname__} uses unregistered port(s) {unknown}; "
                        "declare them with register_port")


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
