"""VLLMBackend: a clear error without vLLM/CUDA; its calls checked against a stand-in vllm."""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm import SamplingParams, load_backend
from memfactory_core.llm.vllm_backend import NOT_INSTALLED, VLLMBackend

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here; the missing-vLLM error cannot occur")
def test_missing_vllm_is_a_clear_error() -> None:
    with pytest.raises(MemFactoryError) as err:
        VLLMBackend("tiny-random")
    assert str(err.value) == NOT_INSTALLED
    assert "pip install 'memfactory[vllm]'" in str(err.value)
    with pytest.raises(MemFactoryError, match="vLLM is not installed"):
        load_backend("tiny-random", backend="vllm")


# A minimal stand-in for the parts of vLLM's API the backend uses.


@dataclass
class _LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


class _SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str


@dataclass
class _RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[_Completion]


class _LLM:
    """``vllm.LLM`` as far as the backend uses it. ``chat`` takes vLLM's keyword defaults
    and renders each chat with the model's template exactly as vLLM does, so a backend that
    forgets ``continue_final_message`` gets a closed assistant turn, as it would on a GPU."""

    instances: list[_LLM] = []  # noqa: RUF012

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[dict[str, Any]] = []
        self._tok: Any = None
        _LLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        if self._tok is None:
            from transformers import AutoTokenizer

            from memfactory_core.llm.models import resolve_model_path

            self._tok = AutoTokenizer.from_pretrained(resolve_model_path("tiny-random"))
        return self._tok

    def render(self, messages: list[Any], add_generation_prompt: bool,
               continue_final_message: bool) -> list[str]:
        """The prompt text of each chat, as vLLM's ``LLM.chat`` builds it."""
        if add_generation_prompt and continue_final_message:
            # vLLM's own check
            raise ValueError("Cannot set both `continue_final_message` and "
                             "`add_generation_prompt` to True.")
        tok = self.get_tokenizer()
        return [tok.apply_chat_template(m, tokenize=False,
                                        add_generation_prompt=add_generation_prompt,
                                        continue_final_message=continue_final_message)
                for m in messages]

    def chat(self, messages: list[Any], sampling_params: Any = None, use_tqdm: bool = True,
             lora_request: Any = None, chat_template: str | None = None,
             add_generation_prompt: bool = True, continue_final_message: bool = False,
             **kwargs: Any) -> list[Any]:
        texts = self.render(messages, add_generation_prompt, continue_final_message)
        self.calls.append({"messages": messages, "sampling_params": sampling_params,
                           "use_tqdm": use_tqdm, "lora_request": lora_request,
                           "add_generation_prompt": add_generation_prompt,
                           "continue_final_message": continue_final_message,
                           "prompts": texts, **kwargs})
        return [
            _RequestOutput(
                prompt_token_ids=list(range(len(m[-1]["content"]))),
                outputs=[_Completion(f"reply {i}", [7] * (i + 1), "length" if i else "stop")],
            )
            for i, m in enumerate(messages)
        ]


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[_LLM]:
    vllm = types.ModuleType("vllm")
    vllm.LLM = _LLM  # type: ignore[attr-defined]
    vllm.SamplingParams = _SamplingParams  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = _LoRARequest  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    _LLM.instances.clear()
    return _LLM


def test_no_cuda_is_a_clear_error(fake_vllm: type[_LLM], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MemFactoryError, match="no CUDA device"):
        VLLMBackend("some/model")
    assert fake_vllm.instances == []


def test_calls_match_vllm_api(
    fake_vllm: type[_LLM], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = VLLMBackend("base/model", enable_lora=True, max_lora_rank=32, max_model_len=4096)
    [llm] = fake_vllm.instances
    assert llm.kwargs["model"] == "base/model"
    assert (llm.kwargs["enable_lora"], llm.kwargs["max_lora_rank"]) == (True, 32)
    assert llm.kwargs["max_model_len"] == 4096
    assert backend.tokenizer.decode(backend.tokenizer.encode("the memory")) == "the memory"

    prompts = [[{"role": "user", "content": "abc"}], [{"role": "user", "content": "de"}]]
    params = SamplingParams(max_new_tokens=9, temperature=0.8, seed=40, stop=("</s>",))
    gens = backend.generate(prompts, params)
    call = llm.calls[-1]
    assert call["messages"] == prompts and call["lora_request"] is None
    assert call["add_generation_prompt"] is True
    sp = [p.kwargs for p in call["sampling_params"]]
    assert [p["seed"] for p in sp] == [40, 41]
    assert sp[0]["max_tokens"] == 9 and sp[0]["temperature"] == 0.8 and sp[0]["top_k"] == -1
    assert sp[0]["stop"] == ["</s>"]
    assert [g.text for g in gens] == ["reply 0", "reply 1"]
    assert [g.finish_reason for g in gens] == ["stop", "length"]
    assert [(g.prompt_tokens, g.completion_tokens) for g in gens] == [(3, 1), (2, 2)]
    assert gens[1].completion_ids == [7, 7]

    with pytest.raises(MemFactoryError, match=r"adapter_config\.json"):
        backend.set_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    backend.set_adapter(tmp_path)
    backend.generate(prompts, params)
    first = llm.calls[-1]["lora_request"]
    backend.set_adapter(tmp_path)  # same folder, new weights: needs a new id
    backend.generate(prompts, params)
    second = llm.calls[-1]["lora_request"]
    assert first.lora_path == second.lora_path == str(tmp_path)
    assert first.lora_int_id != second.lora_int_id
    assert backend.adapter_path == str(tmp_path)
    backend.set_adapter(None)
    backend.generate(prompts, params)
    assert llm.calls[-1]["lora_request"] is None


def test_adapter_needs_lora(fake_vllm: type[_LLM], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = VLLMBackend("base/model")
    assert "enable_lora" not in fake_vllm.instances[0].kwargs
    with pytest.raises(MemFactoryError, match="enable_lora=True"):
        backend.set_adapter("/nowhere")


def test_a_prompt_ending_with_an_assistant_prefix_is_continued(
    fake_vllm: type[_LLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    backend = VLLMBackend("base/model")
    [llm] = fake_vllm.instances
    prefilled = [[{"role": "user", "content": "Where is it?"},
                  {"role": "assistant", "content": "Answer: \\boxed{"}]] * 2
    backend.generate(prefilled, SamplingParams(max_new_tokens=4))
    call = llm.calls[-1]
    assert (call["continue_final_message"], call["add_generation_prompt"]) == (True, False)
    # the model goes on inside the open box, not after a closed assistant turn
    assert all(text.endswith("<|im_start|>assistant\nAnswer: \\boxed{")
               for text in call["prompts"]), call["prompts"]

    plain = [[{"role": "user", "content": "Where is it?"}]]
    backend.generate(plain, SamplingParams(max_new_tokens=4))
    call = llm.calls[-1]
    assert (call["continue_final_message"], call["add_generation_prompt"]) == (False, True)
    assert call["prompts"][0].endswith("Where is it?<|im_end|>\n<|im_start|>assistant\n")

    # the same text the transformers backend feeds its model
    local = load_backend("tiny-random", device="cpu", dtype="float32")
    assert local.render_prompts(prefilled[:1] + plain) == [
        llm.calls[-2]["prompts"][0], call["prompts"][0]]
    with pytest.raises(MemFactoryError, match="cannot mix"):
        backend.generate([prefilled[0], plain[0]], SamplingParams(max_new_tokens=4))
