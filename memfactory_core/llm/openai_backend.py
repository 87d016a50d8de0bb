"""Any OpenAI-compatible chat completions endpoint (OpenAI, vLLM serve, llama.cpp, ...)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from memfactory_core.config import check_key_env, key_env_allowed, restricted
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import Generation, LLMBackend, Prompt, SamplingParams, TextTokenizer

# GPT-2 style pieces: a word or one punctuation mark with its leading space, else whitespace.
_WORD_RE = re.compile(r" ?\w+| ?[^\w\s]|\s+")
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class RegexTokenizer:
    """Approximate tokenizer: words and punctuation marks (with their leading space).

    Used when a remote model's real tokenizer is not available locally. Counts approximate
    subword tokenizers from below (a word is one token here, about 1.3 on average there);
    ``decode(encode(text)) == text`` holds exactly. Ids index a vocabulary that grows as new
    pieces are seen, so they are stable within one process only.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _WORD_RE.findall(text):
            i = self._ids.get(piece)
            if i is None:
                i = self._ids[piece] = len(self._pieces)
                self._pieces.append(piece)
            ids.append(i)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self._pieces[i] for i in ids)


class OpenAIBackend(LLMBackend):
    """Chat completions over HTTP; a batch is sent concurrently and returned in order.

    The API key is read from the environment variable named ``api_key_env`` (default
    ``OPENAI_API_KEY``) when the backend is built and is never shown in ``repr``/``str`` or
    error messages. Local servers that need no key get the placeholder ``"EMPTY"`` when the
    variable is unset. In a process that executes submitted configs only the variables the
    operator allowed may be named (see :func:`memfactory_core.config.check_key_env`), and the
    default is read only when it is one of them.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 2,
        tokenizer: TextTokenizer | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise MemFactoryError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.model_name = model
        self.base_url = base_url
        if api_key_env is not None:
            check_key_env(api_key_env)
        elif restricted() and not key_env_allowed(DEFAULT_KEY_ENV):
            api_key_env = ""  # no key: the operator did not allow the default one
        self.api_key_env = DEFAULT_KEY_ENV if api_key_env is None else api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self._tokenizer: TextTokenizer = tokenizer if tokenizer is not None else RegexTokenizer()
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if not key:
            if base_url is None:
                raise MemFactoryError(
                    "the OpenAI API needs a key: set the environment variable "
                    f"{self.api_key_env or DEFAULT_KEY_ENV}"
                )
            key = "EMPTY"
        self._client = openai.OpenAI(
            api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    @property
    def endpoint(self) -> str:
        """The endpoint the requests go to, for messages."""
        return str(self._client.base_url).rstrip("/")

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model_name!r}, endpoint={self.endpoint!r}, "
            f"api_key_env={self.api_key_env!r}, max_concurrency={self.max_concurrency})"
        )

    __str__ = __repr__

    @property
    def tokenizer(self) -> TextTokenizer:
        return self._tokenizer

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams,
                 choices: Sequence[Sequence[str]] | None = None) -> list[Generation]:
        """Send every prompt (at most ``max_concurrency`` at a time); results in input order."""
        if not prompts:
            return []
        if len(prompts) == 1:
            return [self._complete(prompts[0], params, 0)]
        workers = min(self.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-backend") as pool:
            futures = [pool.submit(self._complete, p, params, i) for i, p in enumerate(prompts)]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def _request(self, prompt: Prompt, params: SamplingParams, index: int) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model_name,
            "messages": [dict(m) for m in prompt],
            "max_tokens": params.max_new_tokens,
            "temperature": max(params.temperature, 0.0),
            "top_p": params.top_p,
            "n": 1,
        }
        if params.seed is not None:
            # Distinct per prompt so a group of identical prompts still yields distinct samples.
            request["seed"] = params.seed + index
        if params.stop:
            request["stop"] = list(params.stop)
        extra = dict(self.extra_body)
        if params.top_k > 0:
            extra["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if extra:
            request["extra_body"] = extra
        return request

    def _complete(self, prompt: Prompt, params: SamplingParams, index: int) -> Generation:
        try:
            response = self._client.chat.completions.create(**self._request(prompt, params, index))
        except openai.OpenAIError as exc:
            raise MemFactoryError(
                f"OpenAI-compatible endpoint {self.endpoint} (model {self.model_name!r}) "
                f"failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not response.choices:
            raise MemFactoryError(
                f"OpenAI-compatible endpoint {self.endpoint} returned no choices "
                f"(model {self.model_name!r})"
            )
        choice = response.choices[0]
        text = choice.message.content or ""
        cut = [i for i in (text.find(s) for s in params.stop if s) if i >= 0]
        if cut:  # servers that ignore or cap `stop` still get it applied
            text = text[: min(cut)]
        usage = response.usage
        prompt_tokens = usage.prompt_tokens if usage else self._count_prompt(prompt)
        completion_tokens = usage.completion_tokens if usage else self.count_tokens(text)
        return Generation(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason="length" if choice.finish_reason == "length" else "stop",
        )

    def _count_prompt(self, prompt: Prompt) -> int:
        return sum(self.count_tokens(m.get("content", "")) for m in prompt)
