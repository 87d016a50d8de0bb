"""vLLM generation on a GPU (optional extra), with LoRA adapters loaded per request.

During training the current LoRA adapter is saved to a folder and handed to
:meth:`VLLMBackend.set_adapter`; every later batch is generated with it through a
``LoRARequest``, so the base weights are never re-synced. Each call gets a fresh adapter id:
vLLM caches adapters by id, and reusing an id would keep serving the old weights.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import (
    Generation,
    LLMBackend,
    Prompt,
    SamplingParams,
    TextTokenizer,
    is_prefill,
)

NOT_INSTALLED = "vLLM is not installed: pip install 'memfactory[vllm]' on a GPU machine"


class VLLMBackend(LLMBackend):
    """Chat generation with ``vllm.LLM`` (needs CUDA); one ``llm.chat`` call per batch."""

    def __init__(
        self,
        model: str | Path,
        *,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        adapter_path: str | Path | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        model_name: str | None = None,
        **llm_kwargs: Any,
    ) -> None:
        try:
            import torch
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError as exc:
            raise MemFactoryError(NOT_INSTALLED) from exc
        if not torch.cuda.is_available():
            raise MemFactoryError(f"{NOT_INSTALLED} (no CUDA device is visible here)")
        from memfactory_core.llm.transformers_backend import HFTextTokenizer

        self._vllm = vllm
        self._lora_request_cls = LoRARequest
        self.model_name = model_name or str(model)
        self.enable_lora = enable_lora or adapter_path is not None
        kwargs: dict[str, Any] = {
            "model": str(model),
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            "trust_remote_code": trust_remote_code,
            **llm_kwargs,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if self.enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank)
        self.llm = vllm.LLM(**kwargs)
        self._tokenizer = HFTextTokenizer(self.llm.get_tokenizer())
        self._adapter_ids = itertools.count(1)
        self._lora_request: Any = None
        if adapter_path is not None:
            self.set_adapter(adapter_path)

    def __repr__(self) -> str:
        adapter = self._lora_request.lora_path if self._lora_request is not None else None
        return f"VLLMBackend(model={self.model_name!r}, adapter={adapter!r})"

    @property
    def tokenizer(self) -> TextTokenizer:
        return self._tokenizer

    @property
    def adapter_path(self) -> str | None:
        """The LoRA adapter folder used for generation, if any."""
        return self._lora_request.lora_path if self._lora_request is not None else None

    def set_adapter(self, path: str | Path | None) -> None:
        """Generate with the PEFT adapter saved at ``path`` from now on (None: base model)."""
        if path is None:
            self._lora_request = None
            return
        if not self.enable_lora:
            raise MemFactoryError(
                f"{self.model_name} was loaded without LoRA support: pass enable_lora=True"
            )
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise MemFactoryError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
        adapter_id = next(self._adapter_ids)
        self._lora_request = self._lora_request_cls(
            lora_name=f"adapter-{adapter_id}", lora_int_id=adapter_id, lora_path=str(folder)
        )

    def _sampling_params(self, params: SamplingParams, index: int) -> Any:
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=params.max_new_tokens,
            temperature=max(params.temperature, 0.0),
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            repetition_penalty=params.repetition_penalty,
            # Distinct per prompt so a GRPO group of identical prompts gets distinct samples.
            seed=None if params.seed is None else params.seed + index,
            stop=list(params.stop) or None,
            skip_special_tokens=True,
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams,
                 choices: Sequence[Sequence[str]] | None = None) -> list[Generation]:
        """One ``llm.chat`` call for the whole batch (vLLM schedules it); results in order."""
        if not prompts:
            return []
        prefill = is_prefill(prompts[0])
        if any(is_prefill(p) != prefill for p in prompts):
            raise MemFactoryError("a vLLM batch cannot mix prefilled and plain prompts")
        outputs = self.llm.chat(
            [list(p) for p in prompts],
            [self._sampling_params(params, i) for i in range(len(prompts))],
            use_tqdm=False,
            lora_request=self._lora_request,
            add_generation_prompt=not prefill,
            continue_final_message=prefill,
        )
        results = []
        for out in outputs:
            completion = out.outputs[0]
            prompt_ids = list(out.prompt_token_ids or [])
            ids = list(completion.token_ids)
            results.append(
                Generation(
                    text=completion.text,
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(ids),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                    prompt_ids=prompt_ids,
                    completion_ids=ids,
                )
            )
        return results
