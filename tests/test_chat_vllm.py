"""vLLM in the chat: offered only where vllm is installed, and a chat model chosen with it
loads through the vLLM backend (checked with a stand-in vllm module); without vllm the
option is absent and a session asking for it is refused with a clear message."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.agent_manager import agent_model_name, model_backends, vllm_installed
from app.chat_service import ChatService
from app.ui import build_app
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.models import resolve_model_path
from memfactory_core.llm.vllm_backend import VLLMBackend
from tests.test_chat_app import given_facts
from tests.test_chat_service import _trained_run, run

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"


@dataclass
class _Output:
    prompt_token_ids: list[int]
    outputs: list[_Completion]


@dataclass
class _LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class _SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


class _LLM:
    """``vllm.LLM`` as far as the backend uses it; answers every chat with one line."""

    instances: list[_LLM] = []  # noqa: RUF012

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.chats: list[dict[str, Any]] = []
        _LLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model_path("tiny-random"))

    def chat(self, messages: list[Any], sampling_params: Any = None, **kwargs: Any
             ) -> list[_Output]:
        self.chats.append({"messages": messages, **kwargs})
        return [_Output([1, 2, 3], [_Completion("Mia lives in Rome.\nAnswer: Rome", [5, 6])])
                for _ in messages]


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[_LLM]:
    """A stand-in ``vllm`` that ``find_spec`` finds, and a visible CUDA device."""
    import torch

    vllm = types.ModuleType("vllm")
    vllm.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    vllm.LLM = _LLM  # type: ignore[attr-defined]
    vllm.SamplingParams = _SamplingParams  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = _LoRARequest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _LLM.instances.clear()
    return _LLM


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


def backend_choices(store: RunStore) -> list[str]:
    """The choices of the Chat tab's backend picker in a freshly built workbench."""
    demo = build_app(store, refresh_s=5.0)
    try:
        [picker] = [b for b in demo.blocks.values()
                    if getattr(b, "elem_id", None) == "chat-backend"]
        return [c[1] if isinstance(c, tuple) else c for c in picker.choices]
    finally:
        demo.close()


def test_vllm_is_offered_and_a_chat_model_loads_through_it(fake_vllm: type[_LLM],
                                                           store: RunStore) -> None:
    assert importlib.util.find_spec("vllm") is not None and vllm_installed()
    assert model_backends() == ["transformers", "vllm"]
    assert backend_choices(store) == ["transformers", "vllm"]
    name = agent_model_name("vllm", "tiny-random")
    assert name == "vllm:tiny-random"
    assert agent_model_name("transformers", "tiny-random") == "tiny-random"
    chat = ChatService(store)
    sid = chat.create_session(given_facts("rag"), name)
    loaded = chat.manager.load(name)
    assert isinstance(loaded.llm.inner, VLLMBackend)
    assert loaded.describe == "tiny-random (vLLM)"
    [llm] = fake_vllm.instances
    assert llm.kwargs["model"] == str(resolve_model_path("tiny-random"))
    out = run(chat.send(sid, "My sister Mia lives in Rome."))
    assert out["done"].text == "Rome"
    assert out["tokens"] == "Mia lives in Rome.\nAnswer: Rome"
    assert "Mia lives in Rome" in llm.chats[-1]["messages"][0][-1]["content"]


def test_a_training_run_adapter_is_served_by_vllm(fake_vllm: type[_LLM], store: RunStore,
                                                  tmp_path: Path) -> None:
    run_id = _trained_run(store, tmp_path, None)
    chat = ChatService(store)
    sid = chat.create_session(given_facts("rag"), f"vllm:run:{run_id}")
    [llm] = fake_vllm.instances
    assert llm.kwargs["enable_lora"] is True
    assert llm.kwargs["model"] == str(resolve_model_path("tiny-random"))
    run(chat.send(sid, "My sister Mia lives in Rome."))
    request = llm.chats[-1]["lora_request"]
    assert Path(request.lora_path).name == "checkpoint-3"


def test_a_vllm_adapter_of_another_base_is_refused(fake_vllm: type[_LLM], store: RunStore,
                                                   tmp_path: Path) -> None:
    run_id = _trained_run(store, tmp_path, "some-org/another-model")
    chat = ChatService(store)
    with pytest.raises(MemFactoryError, match="trained on 'some-org/another-model'"):
        chat.create_session(given_facts("rag"), f"vllm:run:{run_id}")
    assert fake_vllm.instances == [] and chat.sessions() == []


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: the option is always offered")
def test_without_vllm_the_option_is_absent_and_asking_for_it_is_refused(
        store: RunStore) -> None:
    assert model_backends() == ["transformers"]
    assert backend_choices(store) == ["transformers"]
    chat = ChatService(store)
    with pytest.raises(MemFactoryError) as err:
        chat.create_session(given_facts("rag"), "vllm:tiny-random")
    assert str(err.value) == (
        "model 'vllm:tiny-random' asks for the vLLM backend, but vLLM is not installed: "
        "pip install 'memfactory[vllm]' on a GPU machine; or choose the transformers backend")
    assert chat.sessions() == []
    with pytest.raises(MemFactoryError, match="vLLM is not installed"):
        chat.create_session(given_facts("rag"), agent_model_name("vllm", "tiny-random"))


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: the option is always offered")
def test_without_vllm_the_endpoints_say_so(tmp_path: Path) -> None:
    from tests.app_support import api_client

    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    store.save_pipeline("chat_rag", given_facts("rag"))
    with api_client(build_app(store, refresh_s=5.0)) as api:
        assert api.predict(api_name="/chat_model_backends") == ["transformers"]
        with pytest.raises(Exception, match="vLLM is not installed"):
            api.predict("chat_rag", "vllm:tiny-random", api_name="/chat_new_session")
    assert ChatService(store).sessions() == []
