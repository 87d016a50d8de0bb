"""LLM backends (transformers, vLLM, OpenAI-compatible) and the model-name registry.

Importing this package is cheap: torch, transformers, openai and vllm are imported only when
a backend or builder that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from memfactory_core.llm.base import (
    Generation,
    LLMBackend,
    Message,
    Prompt,
    SamplingParams,
    TextTokenizer,
)
from memfactory_core.llm.models import (
    BACKENDS,
    ModelInfo,
    builtin_model_names,
    list_models,
    load_backend,
    prepare_model,
    resolve_model_path,
)

if TYPE_CHECKING:
    from memfactory_core.llm.openai_backend import OpenAIBackend, RegexTokenizer
    from memfactory_core.llm.smollm2 import build_smollm2
    from memfactory_core.llm.tiny_random import build_tiny_random
    from memfactory_core.llm.transformers_backend import HFTextTokenizer, TransformersBackend
    from memfactory_core.llm.vllm_backend import VLLMBackend

_LAZY = {
    "TransformersBackend": "transformers_backend",
    "HFTextTokenizer": "transformers_backend",
    "OpenAIBackend": "openai_backend",
    "RegexTokenizer": "openai_backend",
    "VLLMBackend": "vllm_backend",
    "build_tiny_random": "tiny_random",
    "build_smollm2": "smollm2",
}

__all__ = [
    "BACKENDS",
    "Generation",
    "HFTextTokenizer",
    "LLMBackend",
    "Message",
    "ModelInfo",
    "OpenAIBackend",
    "Prompt",
    "RegexTokenizer",
    "SamplingParams",
    "TextTokenizer",
    "TransformersBackend",
    "VLLMBackend",
    "build_smollm2",
    "build_tiny_random",
    "builtin_model_names",
    "list_models",
    "load_backend",
    "prepare_model",
    "resolve_model_path",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
