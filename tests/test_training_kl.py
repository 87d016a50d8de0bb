"""The KL term of GRPO with ``beta > 0``: its reference is the base model with the LoRA
adapter switched off, so once an update has moved the adapter the reported KL is positive
and equals the k3 estimate against that base, computed here independently."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from memfactory_core.training.callbacks import JsonlCallback
from memfactory_core.training.trainer import GRPOTrainer
from tests.test_training_trainer import _config


def _completion_logps(model: torch.nn.Module, prompt: list[int], completion: list[int]
                      ) -> torch.Tensor:
    """Log-probabilities of ``completion`` after ``prompt`` under ``model`` (no padding)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.gather(logits.log_softmax(-1), -1,
                        torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


def test_kl_is_zero_before_any_update_and_positive_after(tmp_path: Path) -> None:
    out = tmp_path / "run"
    # a memory-length reward varies within groups, so updates move the adapter
    cfg = _config(out, beta=0.04, learning_rate=0.05, max_steps=3, num_generations=4,
                  rewards=[{"name": "memory_length", "budget": 4}])
    GRPOTrainer(cfg, [JsonlCallback()]).train()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # LoRA starts as the identity, so the policy equals its reference at step 1
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    # every step after one whose groups had a learning signal sees a moved policy
    moved = False
    checked = 0
    for before, row in itertools.pairwise(rows):
        moved = moved or before["frac_reward_zero_std"] < 1.0
        if moved:
            assert row["kl"] > 1e-6, rows
            checked += 1
    assert checked, "no step had a group with different rewards: nothing was tested"


def test_kl_reference_is_the_base_model_with_the_adapter_off(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from memfactory_core.llm.models import resolve_model_path

    trainer = GRPOTrainer(_config(tmp_path / "run", beta=0.04, learning_rate=0.05,
                                  max_steps=5))
    results, _ = trainer.rollout(trainer.episodes_for_step(0))
    samples = trainer.turn_samples(results, torch.tensor([1.0, -1.0, 0.5, -0.5]))
    assert samples
    trainer.optimize(samples)  # an update: the adapter is no longer the identity

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-random"),
                                                dtype=torch.float32, use_safetensors=True)
    base.eval()
    policy = trainer.peft_model
    per_token_kl = []
    for s in samples:
        logp = _completion_logps(policy, s.prompt_ids, s.completion_ids)
        ref = _completion_logps(base, s.prompt_ids, s.completion_ids)
        with policy.disable_adapter():
            off = _completion_logps(policy, s.prompt_ids, s.completion_ids)
        assert torch.allclose(off, ref, atol=1e-5)  # adapter off == the untouched base
        delta = ref - logp
        per_token_kl.append(torch.exp(delta) - delta - 1)
    expected = float(torch.cat(per_token_kl).mean())
    assert expected > 1e-6  # the update moved the policy away from the base

    reported = trainer.optimize(samples)["kl"]
    assert reported == pytest.approx(expected, rel=1e-3, abs=1e-7)
