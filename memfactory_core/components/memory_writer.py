"""MemAgent's memory writer: reads one chunk and rewrites the bounded text memory."""

from __future__ import annotations

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
from memfactory_core.memory.base import MemoryKind
from memfactory_core.memory.text import TextMemory
from memfactory_core.metrics.qa import strip_think

MEMORY_WRITER_TEMPLATE = """\
Below are a question, the notes you have kept so far, and the next part of a long text.
Read the new part and rewrite your notes so that they help answer the question. Keep every
useful detail from your earlier notes and add what the new part contributes; leave out what
does not bear on the question.

<question>
{question}
</question>

<notes>
{memory}
</notes>

<text>
{chunk}
</text>

Write your updated notes:"""


class MemoryWriterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(
        MEMORY_WRITER_TEMPLATE,
        description="Prompt with the placeholders {question}, {memory} and {chunk}.",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Generation limit (None: the memory's token budget)."
    )

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        fields = {"question", "memory", "chunk"}
        return check_template(v, required={"memory", "chunk"}, allowed=fields)


@register
class MemoryWriter(LLMComponent):
    name = "memory_writer"
    stage = Stage.WRITE
    description = "Rewrite the text memory after reading a chunk, keeping what helps answer."
    Params = MemoryWriterParams
    inputs = (Port.QUESTION, Port.CHUNK)
    memory = MemoryKind.TEXT
    default_role = "policy"

    def prompt(self, state: RolloutState) -> Prompt:
        p: MemoryWriterParams = self.params  # type: ignore[assignment]
        content = fill(p.template, question=state.values[Port.QUESTION],
                       memory=state.memory.snapshot(), chunk=state.values[Port.CHUNK])
        return [{"role": "user", "content": content}]

    def max_new_tokens(self, batch: list[RolloutState]) -> int:
        p: MemoryWriterParams = self.params  # type: ignore[assignment]
        memory = batch[0].memory
        assert isinstance(memory, TextMemory)
        return p.max_new_tokens or memory.max_tokens

    def read(self, state: RolloutState, prompt: Prompt, gen: Generation) -> StepResult:
        memory = state.memory
        assert isinstance(memory, TextMemory)
        memory.write(strip_think(gen.text).strip())
        return StepResult(output=gen.text)
