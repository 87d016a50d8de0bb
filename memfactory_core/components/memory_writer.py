"""MemAgent's memory writer: reads one chunk and rewrites the bounded text memory."""

from __future__ import annotations

from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory_core.components.base import (
    Component,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.components.templates import check_template, fill
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
class MemoryWriter(Component):
    name = "memory_writer"
    stage = Stage.WRITE
    description = "Rewrite the text memory after reading a chunk, keeping what helps answer."
    Params = MemoryWriterParams
    inputs = (Port.QUESTION, Port.CHUNK)
    memory = MemoryKind.TEXT
    default_role = "policy"

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        p: MemoryWriterParams = self.params  # type: ignore[assignment]
        prompts = [
            [
                {
                    "role": "user",
                    "content": fill(
                        p.template,
                        question=s.values[Port.QUESTION],
                        memory=s.memory.snapshot(),
                        chunk=s.values[Port.CHUNK],
                    ),
                }
            ]
            for s in batch
        ]
        mems = [s.memory for s in batch]
        assert all(isinstance(m, TextMemory) for m in mems)
        limit = p.max_new_tokens or mems[0].max_tokens  # type: ignore[attr-defined]
        gens = self.llm.generate(prompts, replace(self.context.sampling, max_new_tokens=limit))
        results = []
        for state, prompt, gen in zip(batch, prompts, gens, strict=True):
            memory: TextMemory = state.memory  # type: ignore[assignment]
            memory.write(strip_think(gen.text).strip())
            state.turns.append({"component": self.name, "role": self.role, "prompt": prompt,
                                "generation": gen})
            results.append(
                StepResult(
                    prompt=prompt,
                    output=gen.text,
                    prompt_tokens=gen.prompt_tokens,
                    completion_tokens=gen.completion_tokens,
                    extra={"finish_reason": gen.finish_reason},
                )
            )
        return results
