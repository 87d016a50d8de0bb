"""MemAgent's memory: one bounded free-text note, overwritten as the agent reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import TextTokenizer
from memfactory_core.memory.base import Memory, MemoryBuildContext, MemoryKind, register_memory


class TextMemoryParams(BaseModel):
    """Parameters of a text memory."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(1024, ge=1, description="Largest memory size, in policy tokens.")
    initial: str = Field("No previous memory.", description="Memory content before any write.")


class TextMemory(Memory):
    """A free-text memory bounded by a token budget."""

    kind = MemoryKind.TEXT
    trace_full_state = True

    def __init__(self, params: TextMemoryParams, tokenizer: TextTokenizer) -> None:
        self.params = params
        self._tokenizer = tokenizer
        self.content = params.initial
        self.truncated_writes = 0

    @property
    def max_tokens(self) -> int:
        return self.params.max_tokens

    def write(self, text: str) -> None:
        """Overwrite the memory, cutting it to the token budget."""
        ids = self._tokenizer.encode(text)
        if len(ids) > self.max_tokens:
            text = self._tokenizer.decode(ids[: self.max_tokens])
            self.truncated_writes += 1
        self.content = text

    def snapshot(self) -> str:
        return self.content

    def clone(self) -> TextMemory:
        copy = TextMemory(self.params, self._tokenizer)
        copy.content = self.content
        copy.truncated_writes = self.truncated_writes
        return copy

    def mark(self) -> str:
        return self.content

    def diff(self, since: Any) -> dict[str, str] | None:
        if since == self.content:
            return None
        return {"before": since, "after": self.content}


def _create(params: TextMemoryParams, ctx: MemoryBuildContext) -> TextMemory:
    if ctx.tokenizer is None:
        raise MemFactoryError("a text memory needs a tokenizer (its budget is in tokens)")
    return TextMemory(params, ctx.tokenizer)


register_memory(MemoryKind.TEXT, TextMemoryParams, _create,
                "One bounded free-text note, rewritten as the agent reads (MemAgent).")
