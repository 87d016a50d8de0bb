"""Training with vLLM rollouts, checked against the stand-in vllm module: each step's
rollouts use the adapter just saved, and the trainer learns from the turns vLLM returned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memfactory_core.training.trainer import GRPOTrainer
from tests.test_llm_vllm import _LLM, _Completion, _RequestOutput, fake_vllm  # noqa: F401
from tests.test_training_trainer import _config


class _TokenizingLLM(_LLM):
    """Replies with real token ids of the tiny-random tokenizer, varying per request."""

    def chat(self, messages: list[Any], sampling_params: Any = None, use_tqdm: bool = True,
             lora_request: Any = None, chat_template: str | None = None,
             add_generation_prompt: bool = True, continue_final_message: bool = False,
             **kwargs: Any) -> list[Any]:
        texts = self.render(messages, add_generation_prompt, continue_final_message)
        self.calls.append({"messages": messages, "sampling_params": sampling_params,
                           "lora_request": lora_request, "prompts": texts, **kwargs})
        tok = self.get_tokenizer()
        out = []
        for i, text in enumerate(texts):
            prompt = tok.encode(text, add_special_tokens=False)
            # every other reply never closes its box: the format reward varies in each group
            reply = f"Rome and {len(self.calls)}.{i}" if i % 2 else "Rome}"
            out.append(_RequestOutput(list(prompt), [_Completion(
                reply, tok.encode(reply, add_special_tokens=False), "stop")]))
        return out


def test_vllm_rollouts_load_each_steps_adapter(fake_vllm: type[_LLM],  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    import sys

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sys.modules["vllm"], "LLM", _TokenizingLLM)
    cfg = _config(tmp_path / "run", rollout_backend="vllm", device="cpu", max_steps=2,
                  lora={"r": 24, "alpha": 48}, vllm_options={"gpu_memory_utilization": 0.5})
    trainer = GRPOTrainer(cfg)
    [llm] = [x for x in _LLM.instances if isinstance(x, _TokenizingLLM)]
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_lora_rank"] == 32
    assert llm.kwargs["gpu_memory_utilization"] == 0.5
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
              if p.requires_grad}
    summary = trainer.train()
    assert summary["steps"] == 2
    requests = [c["lora_request"] for c in llm.calls]
    assert all(r is not None and r.lora_path == str(tmp_path / "run" / "rollout_adapter")
               for r in requests)
    # a fresh adapter id each step, so vLLM reloads the weights saved for that step
    assert len({r.lora_int_id for r in requests}) == 2
    assert (tmp_path / "run" / "rollout_adapter" / "adapter_model.safetensors").is_file()
    last = summary["last_metrics"]
    assert last["trained_turns"] > 0 and last["grad_norm"] > 0
    moved = [n for n, p in trainer.model.named_parameters()
             if p.requires_grad and not torch.equal(p, before[n])]
    assert moved

    # the answer turns the trainer learns from continue the prefilled answer prefix, with
    # the same prompt tokens as a local rollout of the same chat
    results, _ = trainer.rollout(trainer.episodes_for_step(0))
    answers = [t for r in results for t in r.turns if t["component"] == "boxed_answerer"]
    assert answers
    for turn in answers:
        assert turn["prompt"][-1] == {"role": "assistant", "content": "\\boxed{"}
        ids = turn["generation"].prompt_ids
        assert trainer.tokenizer.decode(ids).endswith("<|im_start|>assistant\n\\boxed{")
        assert ids == trainer.policy.encode_prompts([turn["prompt"]])[0]
