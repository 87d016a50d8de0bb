"""MemAgent's answerer: answers the question from the memory alone, in a \\boxed{}."""

from __future__ import annotations

from typing import Literal

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
from memfactory_core.metrics.qa import extract_boxed, strip_think

ANSWER_TEMPLATE = """\
Answer the question using only your notes. Give a short answer (a name, a number, a few
words, or yes/no) inside \\boxed{}.

Example
Notes: The Eiffel Tower was finished in 1889 and stands in Paris, the capital of France.
Question: In which city is the Eiffel Tower?
Answer: \\boxed{Paris}

Notes: {memory}
Question: {question}"""


class BoxedAnswererParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(
        ANSWER_TEMPLATE, description="Prompt with the placeholders {question} and {memory}."
    )
    max_new_tokens: int = Field(64, ge=1, description="Generation limit for the answer.")
    answer_prefix: str = Field(
        "",
        description=(
            "Start of the reply, written for the model to continue (e.g. 'Answer: \\boxed{'). "
            "Small models that never box on their own need it."
        ),
    )
    fallback: Literal["text", "empty"] = Field(
        "text",
        description=(
            "Prediction when no \\boxed{} is produced: the whole reply (text) or nothing "
            "(empty, MemAgent's strict reward). The trace records whether a box was found."
        ),
    )

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        return check_template(v, required={"question"}, allowed={"question", "memory"})


@register
class BoxedAnswerer(LLMComponent):
    name = "boxed_answerer"
    stage = Stage.ANSWER
    description = "Answer from the memory, with the final answer in \\boxed{}."
    Params = BoxedAnswererParams
    inputs = (Port.QUESTION,)
    outputs = (Port.ANSWER,)
    memory = MemoryKind.TEXT
    default_role = "policy"

    def prompt(self, state: RolloutState) -> Prompt:
        p: BoxedAnswererParams = self.params  # type: ignore[assignment]
        content = fill(p.template, question=state.values[Port.QUESTION],
                       memory=state.memory.snapshot())
        prompt: Prompt = [{"role": "user", "content": content}]
        if p.answer_prefix:
            prompt.append({"role": "assistant", "content": p.answer_prefix})
        return prompt

    def read(self, state: RolloutState, prompt: Prompt, gen: Generation) -> StepResult:
        p: BoxedAnswererParams = self.params  # type: ignore[assignment]
        reply = strip_think(p.answer_prefix + gen.text).strip()
        boxed = extract_boxed(reply)
        if boxed is not None:
            prediction = boxed.strip()
        elif p.fallback == "text":
            prediction = reply
        else:
            prediction = ""
        state.values[Port.ANSWER] = prediction
        return StepResult(output=p.answer_prefix + gen.text,
                          extra={"prediction": prediction, "boxed": boxed is not None})
