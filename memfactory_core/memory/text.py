"""MemAgent's memory: one bounded free-text note, overwritten as the agent reads."""

from __future__ import annotations

from pydantic import BaseModel, Field

from memfactory_core.llm.base import TextTokenizer
from memfactory_core.memory.base import Memory, MemoryKind


class TextMemoryParams(BaseModel):
    """Parameters of a text memory."""

    max_tokens: int = Field(1024, ge=1, description="Largest memory size, in policy tokens.")
    initial: str = Field("No previous memory.", description="Memory content before any write.")


class TextMemory(Memory):
    """A free-text memory bounded by a token budget."""

    kind = MemoryKind.TEXT

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
