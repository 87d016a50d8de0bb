"""Memory-R1's answer agent: distils the retrieved memories that matter, then answers after a
marker, briefly and with absolute dates."""

from __future__ import annotations

import re

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

ANSWER_AGENT_TEMPLATE = """\
Memories from a conversation, each with the date it was recorded:
{memories}

Question: {question}

First copy the memories that help answer the question, one per line. Then write "Answer:"
and a short answer: a few words, a name, a number or a date. Give absolute dates (for
example "7 May 2023"), never "yesterday" or "last week". If the memories do not say, answer
"Not mentioned in the conversation"."""


class AnswerAgentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(ANSWER_AGENT_TEMPLATE,
                          description="Prompt with the placeholders {memories} and {question}.")
    marker: str = Field("Answer:", min_length=1,
                        description="Text after which the answer follows the distilled memories.")
    max_memories: int | None = Field(None, ge=1,
                                     description="Most retrieved entries shown (None: all).")
    max_new_tokens: int = Field(128, ge=1, description="Generation limit.")

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        return check_template(v, required={"memories", "question"},
                              allowed={"memories", "question"})


def render_memories(entries: list[dict]) -> str:
    if not entries:
        return "(no memories)"
    return "\n".join(f"- ({e.get('time') or 'date unknown'}) {e['text']}" for e in entries)


def split_answer(text: str, marker: str) -> tuple[str, str, bool]:
    """``(distilled memories, answer, marker found)`` of an answer agent's reply."""
    reply = strip_think(text).strip()
    hits = [m.start() for m in re.finditer(re.escape(marker), reply, re.I)]
    if hits:
        distilled = reply[: hits[-1]].strip()
        rest = reply[hits[-1] + len(marker):].strip()
        answer = rest.splitlines()[0].strip() if rest else ""
        return distilled, answer, True
    lines = [ln.strip() for ln in reply.splitlines() if ln.strip()]
    return "\n".join(lines[:-1]), (lines[-1] if lines else ""), False


@register
class AnswerAgent(LLMComponent):
    name = "answer_agent"
    stage = Stage.ANSWER
    description = ("Distil the retrieved memories that matter, then answer briefly after a "
                   "marker (Memory-R1's answer agent).")
    Params = AnswerAgentParams
    inputs = (Port.QUESTION, Port.RETRIEVED)
    outputs = (Port.ANSWER,)
    default_role = "answer"

    def prompt(self, state: RolloutState) -> Prompt:
        p: AnswerAgentParams = self.params  # type: ignore[assignment]
        entries = list(state.values.get(Port.RETRIEVED, []))
        if p.max_memories is not None:
            entries = entries[: p.max_memories]
        content = fill(p.template, memories=render_memories(entries),
                       question=state.values[Port.QUESTION])
        return [{"role": "user", "content": content}]

    def read(self, state: RolloutState, prompt: Prompt, gen: Generation) -> StepResult:
        p: AnswerAgentParams = self.params  # type: ignore[assignment]
        distilled, answer, found = split_answer(gen.text, p.marker)
        state.values[Port.ANSWER] = answer
        return StepResult(output=gen.text, extra={"prediction": answer, "distilled": distilled,
                                                  "marker_found": found})
