"""The compact trainer's GRPO loss equals TRL GRPOTrainer._compute_loss on single-turn data."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.trainer.grpo_trainer import GRPOTrainer as TRLGRPOTrainer

from memfactory_core.training.loss import grpo_loss, micro_batch_share


class _Accelerator:
    num_processes = 1

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    gather_for_metrics = gather

    @staticmethod
    def reduce(x: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return x


def _trl_self(logps: torch.Tensor, loss_type: str, beta: float, eps_low: float,
              eps_high: float, accum: int, max_len: int) -> SimpleNamespace:
    """The attributes GRPOTrainer._compute_loss reads, with the model's log-probs given."""
    args = SimpleNamespace(use_bias_correction_kl=False, delta=None)
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, args=args, loss_type=loss_type, epsilon_low=eps_low, epsilon_high=eps_high,
        use_vllm=False, vllm_importance_sampling_correction=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=accum, max_completion_length=max_len,
        accelerator=_Accelerator(), _metrics={"train": defaultdict(list)},
        _entropy_bonus_enabled=False, aux_loss_enabled=False,
    )


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_matches_trl(loss_type: str, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    b, t, accum, max_len = 6, 7, 2, 9
    lengths = torch.tensor([7, 3, 5, 1, 6, 4])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    base = -torch.rand(b, t, generator=g) * 3
    old = base + torch.randn(b, t, generator=g) * 0.3  # ratios far from 1: clipping is active
    ref = base + torch.randn(b, t, generator=g) * 0.2
    adv = torch.randn(b, generator=g)
    num_items = 3 * int(mask.sum())  # tokens in the whole step, as TRL passes it

    ours_logps = base.clone().requires_grad_(True)
    ours = grpo_loss(ours_logps, old, ref if beta else None, adv, mask, loss_type=loss_type,
                     beta=beta, epsilon_low=0.2, epsilon_high=0.28, max_completion_length=max_len,
                     num_items_in_batch=num_items, gradient_accumulation_steps=accum)
    ours.loss.backward()

    trl_logps = base.clone().requires_grad_(True)
    fake = _trl_self(trl_logps, loss_type, beta, 0.2, 0.28, accum, max_len)
    fake.args.steps_per_generation = accum
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(num_items)),
    }
    theirs = TRLGRPOTrainer._compute_loss(fake, None, inputs)
    theirs.backward()

    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert torch.allclose(ours_logps.grad, trl_logps.grad, atol=1e-6)
    m = fake._metrics["train"]
    assert ours.clip_region == pytest.approx(m["clip_ratio/region_mean"][0], abs=1e-6)
    assert ours.clip_region > 0
    if beta:
        assert ours.kl == pytest.approx(m["kl"][0], abs=1e-6)


def test_on_policy_ratio_is_one_and_unknown_type_rejected() -> None:
    logps = torch.full((2, 3), -1.0, requires_grad=True)
    out = grpo_loss(logps, None, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3),
                    loss_type="grpo")
    assert out.loss.item() == pytest.approx(0.0)
    assert out.clip_region == 0.0
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logps, None, None, torch.ones(2), torch.ones(2, 3), loss_type="ppo")
    with pytest.raises(ValueError, match="reference"):
        grpo_loss(logps, None, None, torch.ones(2), torch.ones(2, 3), beta=0.1)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_uneven_micro_batches_add_up_to_trl_on_the_whole_batch(loss_type: str) -> None:
    """Token-budgeted micro-batches differ in size: weighted by ``micro_batch_share`` their
    losses and gradients sum to TRL's loss on the whole batch with no accumulation."""
    g = torch.Generator().manual_seed(1)
    b, t, max_len = 7, 6, 8
    lengths = torch.tensor([6, 1, 4, 2, 6, 3, 5])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    base = -torch.rand(b, t, generator=g) * 3
    old = base + torch.randn(b, t, generator=g) * 0.3
    ref = base + torch.randn(b, t, generator=g) * 0.2
    adv = torch.randn(b, generator=g)
    total_tokens = int(mask.sum())

    ours_logps = base.clone().requires_grad_(True)
    total = torch.zeros(())
    for rows in (slice(0, 1), slice(1, 4), slice(4, 7)):  # 1, 3 and 3 rows
        out = grpo_loss(ours_logps[rows], old[rows], ref[rows], adv[rows], mask[rows],
                        loss_type=loss_type, beta=0.04, epsilon_low=0.2, epsilon_high=0.28,
                        max_completion_length=max_len, num_items_in_batch=total_tokens)
        share = micro_batch_share(loss_type, rows.stop - rows.start, out.tokens, b,
                                  total_tokens)
        (out.loss * share).backward()
        total = total + out.loss.detach() * share

    trl_logps = base.clone().requires_grad_(True)
    fake = _trl_self(trl_logps, loss_type, 0.04, 0.2, 0.28, 1, max_len)
    fake.args.steps_per_generation = 1
    inputs = {
        "prompt_ids": torch.zeros(b, 2, dtype=torch.long),
        "prompt_mask": torch.ones(b, 2, dtype=torch.long),
        "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(total_tokens)),
    }
    theirs = TRLGRPOTrainer._compute_loss(fake, None, inputs)
    theirs.backward()
    assert total.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert torch.allclose(ours_logps.grad, trl_logps.grad, atol=1e-6)
    with pytest.raises(ValueError, match="loss_type"):
        micro_batch_share("ppo", 1, 1, 1, 1)
