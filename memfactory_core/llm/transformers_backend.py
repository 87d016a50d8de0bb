"""Batched chat generation with Hugging Face transformers (the CPU and test default)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import Generation, LLMBackend, Prompt, SamplingParams, is_prefill
from memfactory_core.llm.choices import ChoiceConstraint, TokenTrie, build_trie, longest_choice

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class HFTextTokenizer:
    """A :class:`TextTokenizer` over a Hugging Face tokenizer (no special tokens added)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.hf = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTextTokenizer({type(self.hf).__name__}, vocab={len(self.hf)})"


# glibc's mallopt parameter: allocations at least this large get their own mapping
_M_MMAP_THRESHOLD = -3
HOST_MMAP_THRESHOLD = 128 * 1024


@functools.cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") else None
    except OSError:
        return None


@functools.cache
def limit_allocator_slack() -> bool:
    """Make glibc give every freed tensor of 128 KB or more back to the system at once.

    By default glibc raises its mmap threshold each time a large block is freed (up to
    32 MB), so the activations of a forward/backward pass then come from its heap, which it
    seldom returns: measured on one SmolLM2 forward/backward of 4 x 596 tokens, RSS peaked
    at 5.4 GB with the default and 1.4 GB with a fixed threshold, for the same step time.
    Setting the threshold explicitly turns that adjustment off for the whole process (as
    ``MALLOC_MMAP_THRESHOLD_=131072`` would). True where it applied (glibc), else False.
    """
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, HOST_MMAP_THRESHOLD))


def release_free_memory() -> None:
    """Hand memory that glibc holds but nothing uses back to the system (``malloc_trim``;
    a no-op elsewhere)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else Apple's MPS when available, else the
    CPU (as TRL and accelerate choose); anything else as given (``"cpu"``, ``"cuda:1"``)."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | str:
    """``None`` -> float32 on CPU, bfloat16 (or float16) on CUDA; ``"auto"`` -> the config's."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise MemFactoryError(
            f"unknown dtype {dtype!r}; use one of auto, {', '.join(sorted(_DTYPES))}"
        ) from None


class TransformersBackend(LLMBackend):
    """Chat generation with a local transformers causal LM, batched and left padded.

    Build it from a model folder (safetensors only; on the GPU when there is one unless
    ``device`` says otherwise), or from a model and tokenizer that are already loaded (a PEFT
    model during training). A loaded model is never copied: it stays on its device unless
    ``device`` is given, keeps its train/eval mode (generation switches to eval mode and
    back), and sees its latest weights at every call.
    """

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int = 16,
        trust_remote_code: bool = False,
        model_name: str | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise MemFactoryError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        if isinstance(model, str | Path):
            path = str(model)
            target = resolve_device(device)
            if target.type == "cpu":
                limit_allocator_slack()
            try:
                self.model = AutoModelForCausalLM.from_pretrained(
                    path,
                    dtype=resolve_dtype(dtype, target),
                    trust_remote_code=trust_remote_code,
                    use_safetensors=True,
                ).to(target)
                if tokenizer is None:
                    tokenizer = AutoTokenizer.from_pretrained(
                        path, trust_remote_code=trust_remote_code
                    )
            except (OSError, ValueError) as exc:
                raise MemFactoryError(f"cannot load a model from {path}: {exc}") from exc
            self.model.eval()
            self.model_name = model_name or path
        else:
            if tokenizer is None:
                raise MemFactoryError("a loaded model needs its tokenizer: pass tokenizer=...")
            self.model = model
            if device is not None:
                self.model.to(resolve_device(device))
            if dtype is not None:
                resolved = resolve_dtype(dtype, self.device)
                if isinstance(resolved, torch.dtype):
                    self.model.to(resolved)
            self.model_name = model_name or str(
                getattr(model.config, "_name_or_path", "") or type(model).__name__
            )
        self.hf_tokenizer: PreTrainedTokenizerBase = tokenizer
        self._text_tokenizer = HFTextTokenizer(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise MemFactoryError(f"the tokenizer of {self.model_name} has no chat template")
        self.eos_token_ids = self._eos_ids()
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else self.eos_token_ids[0]

    def __repr__(self) -> str:
        return (
            f"TransformersBackend(model={self.model_name!r}, device={self.device}, "
            f"max_batch_size={self.max_batch_size})"
        )

    @property
    def device(self) -> torch.device:
        """Where the model's weights are now."""
        return next(self.model.parameters()).device

    @property
    def tokenizer(self) -> HFTextTokenizer:
        return self._text_tokenizer

    def _eos_ids(self) -> list[int]:
        ids: list[int] = []
        gen_cfg = getattr(self.model, "generation_config", None)
        for source in (getattr(gen_cfg, "eos_token_id", None), self.hf_tokenizer.eos_token_id):
            for i in source if isinstance(source, list | tuple) else [source]:
                if i is not None and int(i) not in ids:
                    ids.append(int(i))
        if not ids:
            raise MemFactoryError(f"{self.model_name} defines no end-of-sequence token")
        return ids

    def render_prompts(self, prompts: Sequence[Prompt]) -> list[str]:
        """The chat-templated text of each prompt, ending with the assistant header (or, for
        a prompt ending with an assistant message, with that message left open)."""
        return [
            self.hf_tokenizer.apply_chat_template(
                list(p),
                tokenize=False,
                add_generation_prompt=not is_prefill(p),
                continue_final_message=is_prefill(p),
            )
            for p in prompts
        ]

    def encode_prompts(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Token ids of each chat-templated prompt (the template carries the special tokens)."""
        texts = self.render_prompts(prompts)
        return [
            list(ids) for ids in self.hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]

    supports_choices = True

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams,
                 choices: Sequence[Sequence[str]] | None = None) -> list[Generation]:
        """Complete every prompt; micro-batches of similar lengths, results in input order.
        With ``choices``, each reply is one of its prompt's choices (then EOS)."""
        if not prompts:
            return []
        tries: list[TokenTrie | None] = [None] * len(prompts)
        if choices is not None:
            if len(choices) != len(prompts):
                raise MemFactoryError(f"{len(choices)} choice lists for {len(prompts)} prompts")
            longest = 1
            for i, options in enumerate(choices):
                ids = [self.hf_tokenizer(c, add_special_tokens=False)["input_ids"]
                       for c in options]
                if ids:
                    tries[i] = build_trie(ids, self.eos_token_ids[0])
                    longest = max(longest, longest_choice(ids))
            # the tries end every constrained reply; free rows keep the caller's limit
            if all(t is not None for t in tries):
                params = replace(params, max_new_tokens=longest)
        encoded = self.encode_prompts(prompts)
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        if params.seed is not None:
            torch.manual_seed(params.seed)
        results: list[Generation | None] = [None] * len(encoded)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start : start + self.max_batch_size]
                gens = self._generate_batch([encoded[i] for i in chunk], params,
                                            [tries[i] for i in chunk])
                for i, gen in zip(chunk, gens, strict=True):
                    results[i] = gen
        finally:
            if was_training:
                self.model.train()
        return [r for r in results if r is not None]

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": not params.greedy,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        if not params.greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        return GenerationConfig(**kwargs)

    @torch.inference_mode()
    def _generate_batch(self, batch: list[list[int]], params: SamplingParams,
                        tries: Sequence[TokenTrie | None] = ()) -> list[Generation]:
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention[row, width - len(ids) :] = 1
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            generation_config=self._generation_config(params),
            stopping_criteria=StoppingCriteriaList(
                [_StopStrings(self.hf_tokenizer, params.stop, width)] if params.stop else []
            ),
            logits_processor=LogitsProcessorList(
                [ChoiceConstraint(tries, width)] if any(t is not None for t in tries) else []
            ),
        )
        new = out[:, width:].cpu()
        steps = new.shape[1]
        # Each row ends at its first EOS (kept: training needs it); the rest is padding.
        is_eos = torch.isin(new, torch.tensor(self.eos_token_ids, dtype=new.dtype))
        has_eos = is_eos.any(dim=1)
        lengths = torch.where(has_eos, is_eos.int().argmax(dim=1) + 1, steps).tolist()
        completions = [ids[:n] for ids, n in zip(new.tolist(), lengths, strict=True)]
        texts = self.hf_tokenizer.batch_decode(completions, skip_special_tokens=True)
        results = []
        for prompt_ids, ids, text, eos in zip(
            batch, completions, texts, has_eos.tolist(), strict=True
        ):
            finish = "stop" if eos else "length"
            cut = _first_stop(text, params.stop)
            if cut is not None:
                text = text[:cut]
                ids = ids[: self._stop_prefix_len(ids, params.stop)]
                finish = "stop"
            results.append(
                Generation(
                    text=text,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(ids),
                    finish_reason=finish,
                    prompt_ids=list(prompt_ids),
                    completion_ids=ids,
                )
            )
        return results

    def _stop_prefix_len(self, ids: list[int], stop: Sequence[str]) -> int:
        """Fewest leading tokens whose text contains a stop string (binary search on decode)."""
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            text = self.hf_tokenizer.decode(ids[:mid], skip_special_tokens=True)
            if _first_stop(text, stop) is None:
                lo = mid + 1
            else:
                hi = mid
        return hi


class _StopStrings(StoppingCriteria):
    """Marks rows whose recent text contains a stop string: one batched decode per step.

    transformers' own ``stop_strings`` pre-computes a table over the whole vocabulary for
    every new set of stop strings (about 4 s for SmolLM2's 49k tokens); decoding the last
    few tokens of each row costs microseconds.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str], start: int) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.start = start
        # A token carries at least one byte; +3 covers a character split across tokens.
        self.window = max((len(s.encode()) for s in self.stop), default=1) + 3

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        begin = max(self.start, input_ids.shape[1] - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, begin:].tolist(), skip_special_tokens=True)
        hits = [any(s in t for s in self.stop) for t in texts]
        return torch.tensor(hits, dtype=torch.bool, device=input_ids.device)


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None
