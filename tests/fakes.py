"""Test doubles: a scripted LLM backend and a character tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from memfactory_core.llm.base import Generation, LLMBackend, Prompt, SamplingParams


class CharTokenizer:
    """One token per character: exact round trips, easy arithmetic in tests."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


class ScriptedLLM(LLMBackend):
    """Answers each prompt with ``reply(prompt_text)``; records every generate call."""

    model_name = "scripted"

    def __init__(self, reply: Callable[[str], str] | None = None) -> None:
        self.reply = reply or (lambda text: "notes")
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self._tok = CharTokenizer()

    @property
    def tokenizer(self) -> CharTokenizer:
        return self._tok

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Generation]:
        texts = [p[-1]["content"] for p in prompts]
        self.calls.append((texts, params))
        out = []
        for text in texts:
            reply = self.reply(text)[: params.max_new_tokens]
            out.append(Generation(text=reply, prompt_tokens=len(text),
                                  completion_tokens=len(reply)))
        return out
