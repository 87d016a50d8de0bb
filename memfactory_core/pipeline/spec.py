"""Pipeline specs: a memory type, an ingest lane and a query lane of component slots.

A spec is data (YAML or JSON). ``validate_spec`` checks it completely and reports every
problem at once with its location, e.g. ``ingest[1] memory_writer: params.max_new_tokens``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from memfactory_core.components.base import (
    EPISODE_PORTS,
    Component,
    Port,
    Segmenter,
    get_component,
    registry,
)
from memfactory_core.config import load_yaml_text
from memfactory_core.errors import MemFactoryError, Problem, ValidationError
from memfactory_core.memory import memory_types
from memfactory_core.paths import PIPELINES_DIR

#: what a slot ``id`` may be: a letter or underscore, then letters, digits, underscores
SLOT_ID_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class SlotSpec(BaseModel):
    """One slot of a lane: a component, its parameters, (for LLM components) its role and
    an optional ``id`` that names the step stably (unique within the pipeline)."""

    model_config = ConfigDict(extra="forbid")

    component: str
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    role: str | None = None

    @field_validator("id")
    @classmethod
    def _simple_id(cls, v: str | None) -> str | None:
        if v is not None and not SLOT_ID_PATTERN.match(v):
            raise ValueError(f"{v!r} is not a simple identifier (a letter or '_', then "
                             "letters, digits or '_', at most 64)")
        return v


class MemorySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="A registered memory kind: text, bank, ...")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        kinds = memory_types()
        if v not in kinds:
            raise ValueError(f"no implementation for {v} memory yet; available: "
                             f"{', '.join(kinds)}")
        return v


class PipelineSpec(BaseModel):
    """A memory pipeline as data."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    memory: MemorySpec
    ingest: list[SlotSpec]
    query: list[SlotSpec]


class ResolvedSlot(BaseModel):
    """A validated slot: the component class, its typed parameters and its role."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    lane: str
    index: int
    cls: type[Component]
    params: BaseModel
    role: str | None

    @property
    def location(self) -> str:
        return f"{self.lane}[{self.index}] {self.cls.name}"


class ResolvedPipeline(BaseModel):
    """A spec that passed validation, ready for the runtime."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: PipelineSpec
    memory_params: BaseModel
    ingest: list[ResolvedSlot]
    query: list[ResolvedSlot]

    @property
    def roles(self) -> list[str]:
        """Policy roles used by the pipeline's LLM components, in order of first use."""
        seen: dict[str, None] = {}
        for slot in [*self.ingest, *self.query]:
            if slot.role:
                seen[slot.role] = None
        return list(seen)

    @property
    def question_conditioned(self) -> bool:
        """True when ingestion reads the question (MemAgent): one rollout per question."""
        return any(Port.QUESTION in s.cls.inputs for s in self.ingest)


def _pydantic_problems(prefix: str, err: PydanticValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in e["loc"])
        loc = loc.removeprefix(".")  # list positions as in ``ingest[0].id``
        sep = "." if prefix and loc else ""
        out.append(Problem(f"{prefix}{sep}{loc}", e["msg"]))
    return out


def _check_lane(
    lane: str,
    slots: list[SlotSpec],
    memory_kind: str,
    available: set[str],
    problems: list[Problem],
    ids: dict[str, str],
) -> tuple[list[ResolvedSlot], set[str]]:
    comps = registry()
    resolved: list[ResolvedSlot] = []
    if not slots:
        problems.append(Problem(lane, "lane is empty"))
    for i, slot in enumerate(slots):
        where = f"{lane}[{i}]"
        if slot.id is not None:
            if slot.id in ids:
                problems.append(Problem(f"{where}.id", f"id {slot.id!r} is already used by "
                                        f"{ids[slot.id]}; slot ids must be unique"))
            else:
                ids[slot.id] = where
        cls = comps.get(slot.component)
        if cls is None:
            problems.append(
                Problem(
                    f"{where}.component",
                    f"unknown component {slot.component!r}; available: {', '.join(comps)}",
                )
            )
            continue
        where = f"{where} {cls.name}"
        try:
            params = cls.Params.model_validate(slot.params)
        except PydanticValidationError as err:
            problems.extend(_pydantic_problems(f"{where}: params", err))
            params = None
        is_segmenter = issubclass(cls, Segmenter)
        if lane == "ingest" and i == 0 and not is_segmenter:
            problems.append(
                Problem(where, "the ingest lane must start with a segmenter (e.g. token_chunker, "
                        "turn_segmenter)")
            )
        if is_segmenter and (lane != "ingest" or i != 0):
            problems.append(Problem(where, "a segmenter can only be the first ingest slot"))
        for port in cls.inputs:
            if port not in available:
                have = ", ".join(sorted(available)) or "nothing"
                problems.append(
                    Problem(where, f"needs input '{port}', but only {have} is available here")
                )
        if cls.memory is not None and cls.memory != memory_kind:
            problems.append(
                Problem(where, f"works on {cls.memory} memory, but the pipeline memory is "
                        f"{memory_kind}")
            )
        role = slot.role
        if cls.default_role is None and role is not None:
            problems.append(Problem(f"{where}: role", "this component calls no LLM"))
        role = role or cls.default_role
        available = available | set(cls.outputs)
        if params is not None:
            resolved.append(ResolvedSlot(lane=lane, index=i, cls=cls, params=params, role=role))
    return resolved, available


def validate_spec(data: PipelineSpec | dict[str, Any]) -> ResolvedPipeline:
    """Validate a pipeline completely; raise ValidationError listing every problem."""
    problems: list[Problem] = []
    if isinstance(data, PipelineSpec):
        spec = data
    else:
        try:
            spec = PipelineSpec.model_validate(data)
        except PydanticValidationError as err:
            raise ValidationError("invalid pipeline", _pydantic_problems("", err)) from None
    memory_params: BaseModel | None = None
    kinds = memory_types()
    memory_type = kinds.get(spec.memory.type)
    if memory_type is None:
        problems.append(
            Problem("memory.type", f"no implementation for {spec.memory.type} memory yet; "
                    f"available: {', '.join(kinds)}")
        )
    else:
        try:
            memory_params = memory_type.Params.model_validate(spec.memory.params)
        except PydanticValidationError as err:
            problems.extend(_pydantic_problems("memory.params", err))
    ids: dict[str, str] = {}  # slot id -> where it was first used
    ingest, after_ingest = _check_lane(
        "ingest", spec.ingest, spec.memory.type, {*EPISODE_PORTS, Port.QUESTION}, problems, ids
    )
    del after_ingest  # values of the ingest lane do not flow into the query lane; memory does
    query, available = _check_lane("query", spec.query, spec.memory.type, {Port.QUESTION},
                                   problems, ids)
    if spec.query and Port.ANSWER not in available:
        problems.append(Problem("query", "no slot produces an 'answer'"))
    if problems:
        raise ValidationError(f"invalid pipeline {spec.name!r}", problems)
    assert memory_params is not None
    return ResolvedPipeline(spec=spec, memory_params=memory_params, ingest=ingest, query=query)


def load_spec(source: str | Path) -> PipelineSpec | dict[str, Any]:
    """Read a pipeline file (YAML or JSON) or a preset name from ``assets/pipelines``."""
    path = Path(source)
    if not path.exists():
        preset = PIPELINES_DIR / f"{source}.yaml"
        if preset.exists():
            path = preset
        else:
            presets = ", ".join(sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")))
            raise MemFactoryError(f"no pipeline file {source!r}; presets: {presets}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise MemFactoryError(f"{path}: not valid JSON: {err}") from None
    else:
        data = load_yaml_text(text, str(path))  # errors name the file
    if not isinstance(data, dict):
        raise MemFactoryError(f"{path}: a pipeline must be a mapping, got {type(data).__name__}")
    return data


def load_pipeline(source: str | Path) -> ResolvedPipeline:
    """Load and validate a pipeline file or preset name."""
    try:
        return validate_spec(load_spec(source))
    except ValidationError as err:
        raise ValidationError(f"{source}: {err.what}", err.problems) from None


def component_catalog() -> list[dict[str, Any]]:
    """Descriptions of every registered component (for the CLI and the builder)."""
    from memfactory_core.components.base import describe

    return [describe(cls) for cls in registry().values()]


__all__ = [
    "PipelineSpec",
    "ResolvedPipeline",
    "ResolvedSlot",
    "SlotSpec",
    "component_catalog",
    "get_component",
    "load_pipeline",
    "load_spec",
    "validate_spec",
]
