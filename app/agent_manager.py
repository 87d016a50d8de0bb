"""Models loaded for chatting, shared by every chat session of the process (no Gradio here).

A model is named by a string:

- a base model: ``tiny-random``, ``smollm2-135m-instruct`` or a local path;
- ``run:<id>``: a training run's latest checkpoint, a LoRA adapter loaded over its base with
  peft (not merged); an adapter made for another base is refused;
- ``openai:<model>@<base_url>``: an OpenAI-compatible endpoint, its key read from
  ``MEMFACTORY_OPENAI_API_KEY`` or ``OPENAI_API_KEY`` only;
- ``vllm:<model>`` or ``vllm:run:<id>``: a base model or a run's adapter served by vLLM (GPU,
  optional extra), offered only where vllm is installed.

Each loaded model has a lock: one generation at a time per model.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import Generation, LLMBackend, SamplingParams, TextTokenizer


class StreamingLLM(LLMBackend):
    """Wraps a backend; while :attr:`sink` is set, a local transformers model's single-prompt
    generations push their text to it piece by piece as the tokens come."""

    def __init__(self, inner: LLMBackend) -> None:
        self.inner = inner
        self.sink: Callable[[str], None] | None = None

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.inner.tokenizer

    @property
    def model_name(self) -> str:
        return getattr(self.inner, "model_name", "model")

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def generate(self, prompts: Sequence[Any], params: SamplingParams) -> list[Generation]:
        sink = self.sink
        model = getattr(self.inner, "model", None)
        hf_tok = getattr(self.inner, "hf_tokenizer", None)
        if sink is None or len(prompts) != 1 or model is None or hf_tok is None:
            gens = self.inner.generate(prompts, params)
            if sink is not None:
                for g in gens:
                    sink(g.text)
            return gens
        from transformers import TextStreamer

        class _Pieces(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    sink(text)

        streamer = _Pieces(hf_tok, skip_prompt=True, skip_special_tokens=True)
        model.generate = functools.partial(type(model).generate, model, streamer=streamer)
        try:
            return self.inner.generate(prompts, params)
        finally:
            del model.generate


@dataclass
class LoadedModel:
    """A model in memory: its backend, the lock of its generations and what it is."""

    name: str
    llm: StreamingLLM
    describe: str
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def busy(self) -> bool:
        return self.lock.locked()


def _endpoint_backend(spec: str) -> LLMBackend:
    rest = spec.removeprefix("openai:")
    model, sep, base_url = rest.partition("@")
    if not sep or not model or not base_url.startswith(("http://", "https://")):
        raise MemFactoryError(f"endpoint {spec!r}: write openai:<model>@http(s)://host/v1")
    from memfactory_core.llm.models import load_backend

    # the backend reads its key from the environment variables the operator allows
    return load_backend(model, backend="openai", base_url=base_url, timeout=10.0,
                        max_retries=0)


def check_endpoint(backend: LLMBackend, spec: str) -> None:
    """One tiny request: an endpoint that does not answer is refused with a clear message."""
    try:
        backend.generate(["ping"], SamplingParams(max_new_tokens=1))
    except Exception as err:
        raise MemFactoryError(f"endpoint {spec!r} does not answer: "
                              f"{type(err).__name__}: {err}") from None


def adapter_dir(store: Any, run_id: int) -> Path:
    """A training run's latest checkpoint folder holding a LoRA adapter."""
    from memfactory_core.training.trainer import latest_checkpoint

    run = store.get_run(run_id)
    out = (run.config or {}).get("output_dir") or run.output_dir
    ckpt = latest_checkpoint(out) if out else None
    if ckpt is None:
        raise MemFactoryError(f"run:{run_id} has no checkpoint yet (looked in {out})")
    found = sorted(ckpt.glob("**/adapter_config.json"), key=lambda p: len(p.parts))
    if not found:
        raise MemFactoryError(f"run:{run_id}: checkpoint {ckpt} holds no LoRA adapter "
                              "(adapter_config.json)")
    return found[0].parent


def base_model_of(run: Any) -> str:
    """The base model a training run's config names."""
    model = (run.config or {}).get("model")
    if isinstance(model, dict):
        model = model.get("model") or model.get("name")
    if not model:
        raise MemFactoryError(f"run:{run.id}: its config names no base model")
    return str(model)


def check_adapter_base(base: str, folder: Path) -> None:
    """Refuses the adapter in ``folder`` when it was made for another base model."""
    from memfactory_core.llm.models import resolve_model_path

    config = json.loads((folder / "adapter_config.json").read_text())
    made_for = str(config.get("base_model_name_or_path") or "")
    base_path = resolve_model_path(base)
    if made_for and made_for not in (base, str(base_path)) and \
            Path(made_for).name != Path(base_path).name:
        raise MemFactoryError(f"adapter {folder} was trained on {made_for!r}, not on {base!r}: "
                              "load it over its own base model")


def load_adapter(base: str, folder: Path) -> LLMBackend:
    """``base`` with the adapter in ``folder`` over it; refuses an adapter of another base."""
    from peft import PeftModel

    from memfactory_core.llm.models import load_backend

    check_adapter_base(base, folder)
    backend = load_backend(base)
    model = getattr(backend, "model", None)
    try:
        backend.model = PeftModel.from_pretrained(model, str(folder))  # type: ignore[attr-defined]
    except Exception as err:
        raise MemFactoryError(f"adapter {folder} does not fit base {base!r}: "
                              f"{type(err).__name__}: {err}") from None
    backend.model.eval()  # type: ignore[attr-defined]
    return backend


def vllm_installed() -> bool:
    """Whether vllm can be imported here (it is looked up, not imported)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # imported already, without a module spec
        return sys.modules.get("vllm") is not None


def model_backends() -> list[str]:
    """The local backends a chat model can load with: transformers, and vllm where
    installed."""
    return ["transformers", *(["vllm"] if vllm_installed() else [])]


def agent_model_name(backend: str, model: str) -> str:
    """The model name a chat session records for ``model`` loaded with ``backend``
    (``vllm:<model>`` for vLLM; endpoints and names already prefixed stay as they are)."""
    model = model.strip()
    if backend == "vllm" and model and not model.startswith(("vllm:", "openai:")):
        return f"vllm:{model}"
    return model


def check_model_path(name: str) -> None:
    """A model named by a folder must lie under the data roots, as for submitted runs: a chat
    user may not make the server read its other files."""
    from jobs.data_roots import DataRoots, looks_like_path

    if looks_like_path(name, Path.cwd()):
        why = DataRoots.current().refusal(name)
        if why:
            raise MemFactoryError(f"model {name!r}: {why}")


class AgentManager:
    """The models this process has loaded, by name; load once, share, unload."""

    def __init__(self, store: Any = None,
                 loader: Callable[[str], LLMBackend] | None = None) -> None:
        self.store = store
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._guard = threading.Lock()

    def _build(self, name: str) -> tuple[LLMBackend, str]:
        if self._loader is not None:
            return self._loader(name), name
        if name.startswith("openai:"):
            backend = _endpoint_backend(name)
            check_endpoint(backend, name)
            return backend, f"endpoint {name}"
        if name.startswith("vllm:"):
            return self._build_vllm(name)
        if name.startswith("run:"):
            base, folder, run_id = self._run_adapter(name)
            return load_adapter(base, folder), f"{base} + adapter of run {run_id}"
        from memfactory_core.llm.models import load_backend

        check_model_path(name)
        return load_backend(name), name

    def _run_adapter(self, name: str) -> tuple[str, Path, int]:
        """``run:<id>``: the run's base model, its latest adapter folder and the id."""
        from app.services import parse_run_id

        run_id = parse_run_id(name.removeprefix("run:"))
        if self.store is None:
            raise MemFactoryError("no store to find the run's checkpoint in")
        base = base_model_of(self.store.get_run(run_id))
        return base, adapter_dir(self.store, run_id), run_id

    def _build_vllm(self, name: str) -> tuple[LLMBackend, str]:
        from memfactory_core.llm.models import load_backend
        from memfactory_core.llm.vllm_backend import NOT_INSTALLED

        model = name.removeprefix("vllm:").strip()
        if not vllm_installed():
            raise MemFactoryError(f"model {name!r} asks for the vLLM backend, but {NOT_INSTALLED}"
                                  "; or choose the transformers backend")
        if not model or model.startswith(("openai:", "vllm:")):
            raise MemFactoryError(f"model {name!r}: write vllm:<model name or path> or "
                                  "vllm:run:<id>")
        if model.startswith("run:"):
            base, folder, run_id = self._run_adapter(model)
            check_adapter_base(base, folder)
            return (load_backend(base, backend="vllm", adapter_path=folder),
                    f"{base} + adapter of run {run_id} (vLLM)")
        check_model_path(model)
        return load_backend(model, backend="vllm"), f"{model} (vLLM)"

    def load(self, name: str) -> LoadedModel:
        """The model called ``name``, loading it the first time."""
        name = name.strip()
        if not name:
            raise MemFactoryError("choose a model first")
        with self._guard:
            if name not in self._models:
                backend, describe = self._build(name)
                self._models[name] = LoadedModel(name, StreamingLLM(backend), describe)
            return self._models[name]

    def unload(self, name: str) -> bool:
        """Forget model ``name`` (refused while it generates); whether it was loaded."""
        with self._guard:
            loaded = self._models.get(name)
            if loaded is None:
                return False
            if loaded.busy:
                raise MemFactoryError(f"{name} is answering: unload it when it is done")
            del self._models[name]
            return True

    def status(self) -> list[dict[str, Any]]:
        """Loaded models with their busy state."""
        return [{"model": m.name, "describe": m.describe, "busy": m.busy}
                for m in self._models.values()]


def stream_call(fn: Callable[[Callable[[str, Any], None]], Any]) -> Iterator[tuple[str, Any]]:
    """Run ``fn(emit)`` in a thread; yields every ``(kind, value)`` it emits as it comes,
    then ``("done", result)`` (or re-raises its error in the caller's thread)."""
    pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

    def work() -> None:
        try:
            pieces.put(("done", fn(lambda kind, value: pieces.put((kind, value)))))
        except BaseException as err:
            pieces.put(("error", err))

    threading.Thread(target=work, daemon=True).start()
    while True:
        kind, value = pieces.get()
        if kind == "error":
            raise value
        yield kind, value
        if kind == "done":
            return
