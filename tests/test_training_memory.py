"""What keeps a training step's memory small: selective log-softmax, token-budgeted
micro-batches whose split leaves the loss and gradients unchanged, gradient checkpointing
with LoRA, SDPA attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trl.trainer.utils import selective_log_softmax as trl_selective_log_softmax

from memfactory_core.training.loss import selective_log_softmax
from memfactory_core.training.trainer import GRPOTrainer, TurnSample
from tests.test_training_trainer import _config


def test_selective_log_softmax_equals_full_log_softmax_and_trl() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 50, generator=g) * 4
    ids = torch.randint(0, 50, (3, 5), generator=g)
    for temperature in (1.0, 0.7):
        ours_in = logits.clone().requires_grad_(True)
        full_in = logits.clone().requires_grad_(True)
        ours = selective_log_softmax(ours_in, ids, temperature)
        full = (full_in / temperature).log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(ours, full, atol=1e-6)
        assert torch.allclose(ours, trl_selective_log_softmax(logits, ids, temperature),
                              atol=1e-6)
        ours.sum().backward()
        full.sum().backward()
        assert torch.allclose(ours_in.grad, full_in.grad, atol=1e-6)
    # half-precision logits are read in float32, as the float log_softmax did
    half = selective_log_softmax(logits.bfloat16(), ids)
    assert half.dtype == torch.float32
    expected = logits.bfloat16().float().log_softmax(-1).gather(-1, ids.unsqueeze(-1))
    assert torch.allclose(half, expected.squeeze(-1), atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(logits, ids, 0.0)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> GRPOTrainer:
    return GRPOTrainer(_config(tmp_path_factory.mktemp("mem") / "run"))


def _samples(lengths: list[tuple[int, int]]) -> list[TurnSample]:
    return [TurnSample(list(range(3, 3 + p)), list(range(5, 5 + c)), 1.0, i)
            for i, (p, c) in enumerate(lengths)]


def test_micro_batches_keep_to_the_token_budget_and_row_limit(trainer: GRPOTrainer) -> None:
    base = trainer.config
    lengths = [(30, 4), (12, 3), (50, 8), (200, 10), (31, 4), (29, 2), (13, 3), (49, 7)]
    samples = _samples(lengths)
    try:
        trainer.config = base.model_copy(update={"max_tokens_per_micro_batch": 100,
                                                 "per_device_train_batch_size": 3})
        batches = trainer._micro_batches(samples)
        assert sorted(s.trajectory for b in batches for s in b) == list(range(len(samples)))
        for b in batches:
            width = max(len(s.prompt_ids) for s in b) + max(len(s.completion_ids) for s in b)
            assert len(b) <= 3
            assert len(b) * width <= 100 or len(b) == 1
        # the 210-token turn exceeds the budget on its own: it goes alone, nothing is cut
        [alone] = [b for b in batches if any(len(s.prompt_ids) == 200 for s in b)]
        assert len(alone) == 1 and len(alone[0].completion_ids) == 10
        # similar lengths share a micro-batch: the two ~15-token turns are together
        assert any({len(s.prompt_ids) for s in b} >= {12, 13} for b in batches)

        trainer.config = base.model_copy(update={"max_tokens_per_micro_batch": None,
                                                 "per_device_train_batch_size": 3})
        assert [len(b) for b in trainer._micro_batches(samples)] == [3, 3, 2]
        trainer.config = base.model_copy(update={"max_tokens_per_micro_batch": None,
                                                 "gradient_accumulation_steps": 2})
        assert [len(b) for b in trainer._micro_batches(samples)] == [4, 4]
    finally:
        trainer.config = base


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_step_loss_and_gradients_do_not_depend_on_the_split(
    trainer: GRPOTrainer, loss_type: str
) -> None:
    base = trainer.config
    results, _ = trainer.rollout(trainer.episodes_for_step(0))
    samples = trainer.turn_samples(results, torch.tensor([1.0, -1.0, 0.5, -0.25]))
    assert len({len(s.prompt_ids) + len(s.completion_ids) for s in samples}) > 1

    def run(**update: Any) -> tuple[int, dict[str, float], dict[str, torch.Tensor]]:
        trainer.config = base.model_copy(update={"loss_type": loss_type, "beta": 0.04,
                                                 "num_iterations": 2, **update})
        trainer.optimizer.zero_grad(set_to_none=True)
        micro = trainer.prepare_micro_batches(samples)
        stats = trainer.accumulate_gradients(micro)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()
                 if p.grad is not None}
        return len(micro), stats, grads

    try:
        n_whole, whole, g_whole = run(max_tokens_per_micro_batch=None,
                                      per_device_train_batch_size=len(samples))
        n_split, split, g_split = run(max_tokens_per_micro_batch=1)
        n_pairs, pairs, g_pairs = run(max_tokens_per_micro_batch=None,
                                      per_device_train_batch_size=3)
    finally:
        trainer.config = base
        trainer.optimizer.zero_grad(set_to_none=True)
    assert (n_whole, n_split) == (1, len(samples)) and 1 < n_pairs < len(samples)
    assert whole["loss"] != 0.0
    for stats in (split, pairs):
        for key in ("loss", "kl", "clip_ratio/region_mean"):
            assert stats[key] == pytest.approx(whole[key], abs=1e-5), key
    assert g_whole and g_whole.keys() == g_split.keys() == g_pairs.keys()
    for name, g in g_whole.items():
        assert torch.allclose(g_split[name], g, atol=1e-5), name
        assert torch.allclose(g_pairs[name], g, atol=1e-5), name


def _saved_bytes(trainer: GRPOTrainer, inputs: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.per_token_logps(inputs).sum().backward()
    return total


def _counting(fn: Any, calls: dict[str, int], key: str) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[key] += 1
        return fn(*args, **kwargs)

    return counted


def test_gradient_checkpointing_keeps_less_and_computes_the_same(tmp_path: Path) -> None:
    on = GRPOTrainer(_config(tmp_path / "on"))
    off = GRPOTrainer(_config(tmp_path / "off", gradient_checkpointing=False))
    base_on, base_off = on.peft_model.get_base_model(), off.peft_model.get_base_model()
    assert base_on.config._attn_implementation == "sdpa"
    assert all(layer.gradient_checkpointing for layer in base_on.model.layers)
    assert not any(layer.gradient_checkpointing for layer in base_off.model.layers)
    results, _ = on.rollout(on.episodes_for_step(0))
    samples = on.turn_samples(results, torch.ones(len(results)))
    inputs = on._batch_tensors(samples)

    # a checkpointed decoder layer's modules run twice: forward, then the recompute
    calls = {"on": 0, "off": 0}
    for key, t in (("on", on), ("off", off)):
        mlp = t.peft_model.get_base_model().model.layers[0].mlp
        mlp.forward = _counting(mlp.forward, calls, key)
    kept_on, kept_off = _saved_bytes(on, inputs), _saved_bytes(off, inputs)
    assert calls == {"on": 2, "off": 1}
    print(f"kept for backward: {kept_on} bytes checkpointed, {kept_off} not")
    assert kept_on < kept_off / 2, (kept_on, kept_off)

    grads = {}
    for name, t in (("on", on), ("off", off)):
        t.optimizer.zero_grad(set_to_none=True)
        t.per_token_logps(inputs).sum().backward()
        grads[name] = {n: p.grad for n, p in t.model.named_parameters() if p.grad is not None}
    assert grads["on"] and grads["on"].keys() == grads["off"].keys()
    assert all("lora_" in n for n in grads["on"])
    for n, g in grads["on"].items():
        assert torch.allclose(g, grads["off"][n], atol=1e-5), n
