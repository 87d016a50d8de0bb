"""RMM's generator: answers from the selected memories and cites the ones it used as ``[i]``.

Citations are parsed from the reply and recorded with the ids of the cited memories; an index
that names no shown memory is recorded as out of range (never an error), and a reply with no
citation cites nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory_core.components.base import (
    LLMComponent,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.components.templates import check_template, fill
from memfactory_core.llm.base import Generation, Prompt
from memfactory_core.metrics.qa import strip_think

CITING_TEMPLATE = """\
Memories from a conversation, numbered:
{memories}

Question: {question}

Answer in a few words (a name, a number or a date). Then cite the memories you used by
their numbers in square brackets, for example: Paris [0][2]. Cite none if no memory helped."""

_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
_ANSWER_PREFIX = re.compile(r"^\s*(?:final\s+)?answer\s*:\s*", re.I)


@dataclass
class Citations:
    """What a reply cites: indices of shown memories, and indices that name none."""

    cited: list[int] = field(default_factory=list)
    out_of_range: list[int] = field(default_factory=list)


def parse_citations(text: str, shown: int) -> Citations:
    """``[i]`` (also ``[i, j]``) citations of a reply, in order, without repeats."""
    out = Citations()
    for match in _CITATION.finditer(strip_think(text)):
        for raw in match.group(1).split(","):
            i = int(raw)
            target = out.cited if 0 <= i < shown else out.out_of_range
            if i not in target:
                target.append(i)
    return out


def strip_citations(text: str) -> str:
    """The answer of a reply: its first non-empty line without citations or 'Answer:'."""
    lines = [ln.strip() for ln in strip_think(text).splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    return _ANSWER_PREFIX.sub("", _CITATION.sub("", first)).strip().rstrip(".").strip()


def render_numbered_memories(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "(no memories)"
    return "\n".join(f"[{i}] ({e.get('time') or 'date unknown'}) {e['text']}"
                     for i, e in enumerate(entries))


class CitingGeneratorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(CITING_TEMPLATE,
                          description="Prompt with the placeholders {memories} and {question}.")
    max_new_tokens: int = Field(48, ge=1, description="Generation limit.")

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        return check_template(v, required={"memories", "question"},
                              allowed={"memories", "question"})


@register
class CitingGenerator(LLMComponent):
    name = "citing_generator"
    stage = Stage.ANSWER
    description = ("Answer from the selected memories and cite the ones used as [i] "
                   "(RMM's generator; the citations reward the reranker).")
    Params = CitingGeneratorParams
    inputs = (Port.QUESTION, Port.RETRIEVED)
    outputs = (Port.ANSWER,)
    default_role = "generator"

    def prompt(self, state: RolloutState) -> Prompt:
        p: CitingGeneratorParams = self.params  # type: ignore[assignment]
        entries = list(state.values.get(Port.RETRIEVED) or [])
        return [{"role": "user", "content": fill(
            p.template, memories=render_numbered_memories(entries),
            question=state.values[Port.QUESTION])}]

    def read(self, state: RolloutState, prompt: Prompt, gen: Generation) -> StepResult:
        entries = list(state.values.get(Port.RETRIEVED) or [])
        cites = parse_citations(gen.text, len(entries))
        answer = strip_citations(gen.text)
        state.values[Port.ANSWER] = answer
        return StepResult(output=gen.text, extra={
            "prediction": answer, "citations": cites.cited,
            "cited_ids": [entries[i]["id"] for i in cites.cited],
            "out_of_range": cites.out_of_range,
            "shown": [e["id"] for e in entries]})
