"""The interface every LLM backend implements: chat prompts in, generations out, batched."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

Message = dict[str, str]
"""One chat message: ``{"role": "system"|"user"|"assistant", "content": str}``."""

Prompt = list[Message]
"""A chat. When it ends with an assistant message, the model continues that message (prefill)."""


def is_prefill(prompt: Prompt) -> bool:
    """True when the prompt ends with a partial assistant reply to continue."""
    return bool(prompt) and prompt[-1].get("role") == "assistant"


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one batch. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Generation:
    """One completion. Token ids are filled by local backends (training needs them)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"  # "stop" | "length"
    prompt_ids: list[int] | None = field(default=None, repr=False)
    completion_ids: list[int] | None = field(default=None, repr=False)


class TextTokenizer(Protocol):
    """The part of a tokenizer that components need (chunking, memory bounds)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class LLMBackend(ABC):
    """A model that completes chat prompts in batches."""

    #: Name shown in traces and results (model name or path).
    model_name: str
    #: True when ``generate`` honours ``choices`` (constrained decoding); other backends
    #: generate freely and callers parse what comes back.
    supports_choices: bool = False

    @property
    @abstractmethod
    def tokenizer(self) -> TextTokenizer:
        """Tokenizer used to count and cut text in this model's tokens."""

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams,
                 choices: Sequence[Sequence[str]] | None = None) -> list[Generation]:
        """Complete every prompt; one call is one batch (backends may split it internally).

        ``choices``, one list per prompt, restricts each reply to one of those texts where the
        backend ``supports_choices``; elsewhere it is ignored.
        """

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))
