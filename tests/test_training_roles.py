"""Frozen roles: a role outside ``trained_roles`` is served by the base model with the LoRA
adapter switched off, while the trained role generates with the adapter; only trained turns
become training samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from memfactory_core.llm.base import SamplingParams
from memfactory_core.llm.models import load_backend
from memfactory_core.training.trainer import GRPOTrainer
from tests.test_training_trainer import _config

# MemAgent with its answerer on a role of its own
PIPELINE: dict[str, Any] = {
    "name": "memagent-frozen-answerer",
    "memory": {"type": "text", "params": {"max_tokens": 8}},
    "ingest": [
        {"component": "token_chunker", "params": {"chunk_tokens": 32, "max_chunks": 2}},
        {"component": "memory_writer", "role": "policy"},
    ],
    "query": [{"component": "boxed_answerer", "role": "answerer"}],
}


def _perturb_adapter(trainer: GRPOTrainer) -> None:
    """Random LoRA weights, so the adapter visibly changes what the model generates."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_a_role_outside_trained_roles_uses_the_base_model(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "run", pipeline=PIPELINE, trained_roles=["policy"],
                  generation={"temperature": 0.0, "seed": None})
    trainer = GRPOTrainer(cfg)
    _perturb_adapter(trainer)
    results, _ = trainer.rollout(trainer.episodes_for_step(0))
    turns = [t for r in results for t in r.turns]
    frozen = [t for t in turns if t["role"] == "answerer"]
    trained = [t for t in turns if t["role"] == "policy"]
    assert frozen and trained

    base = load_backend("tiny-random")  # a fresh copy of the untouched base weights
    greedy = SamplingParams(max_new_tokens=3)
    distinguished = 0
    for turn in frozen:
        [want] = base.generate([turn["prompt"]], greedy)
        assert turn["generation"].completion_ids == want.completion_ids, turn["prompt"]
        [adapted] = trainer.policy.generate([turn["prompt"]], greedy)
        distinguished += adapted.completion_ids != want.completion_ids
    # the adapter does change these answers, so the check above can tell the two apart
    assert distinguished > 0

    writer = SamplingParams(max_new_tokens=4)
    for turn in trained:
        [adapted] = trainer.policy.generate([turn["prompt"]], writer)
        assert turn["generation"].completion_ids == adapted.completion_ids

    samples = trainer.turn_samples(results, torch.ones(len(results)))
    assert len(samples) == len([t for t in trained if t["generation"].completion_ids])
