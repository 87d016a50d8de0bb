"""The GRPO policy loss, per token, with TRL 1.16's normalisation for each ``loss_type``.

It mirrors ``GRPOTrainer._compute_loss`` (token-level importance sampling, two-sided clipped
ratio, k3 KL to the reference added per token with weight ``beta``), and
``tests/test_training_loss.py`` checks it against that method to 1e-5.

A step's turns are split into micro-batches by a token budget, so micro-batches differ in
size. :func:`micro_batch_share` weights each one so that the accumulated loss and gradients
equal those of the whole step computed as one batch (TRL's loss with no accumulation),
whatever the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor
    #: unscaled policy loss of this micro-batch (TRL's ``policy_loss``)
    policy_loss: float
    kl: float | None
    clip_low: float
    clip_high: float
    clip_region: float
    tokens: int


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """``log_softmax(logits / temperature).gather(index)`` without the full distribution.

    ``logits`` is ``(B, T, V)``, ``index`` ``(B, T)``. Row by row (as TRL's
    ``selective_log_softmax``), in float32: the picked logit minus the row's logsumexp, so at
    most one row's ``(T, V)`` temporaries exist at a time instead of a ``(B, T, V)``
    log-probability tensor (and its float copy and temperature-scaled copy).
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    rows = []
    for row, ids in zip(logits, index, strict=True):
        row = row.float()
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def micro_batch_share(loss_type: str, rows: int, tokens: int, total_rows: int,
                      total_tokens: int) -> float:
    """Weight of one micro-batch's ``grpo_loss`` (computed with
    ``gradient_accumulation_steps=1`` and, for dapo, ``num_items_in_batch=total_tokens``) in
    the whole step's loss: its share of the step's sequences (grpo, dr_grpo: a mean over
    sequences), of its completion tokens (bnpo: a mean over tokens), or 1 (dapo is already
    normalised by the step's tokens)."""
    if loss_type in ("grpo", "dr_grpo"):
        return rows / max(total_rows, 1)
    if loss_type == "bnpo":
        return tokens / max(total_tokens, 1)
    if loss_type == "dapo":
        return 1.0
    raise ValueError(f"unknown loss_type {loss_type!r}; use grpo, bnpo, dr_grpo or dapo")


def grpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor | None,
    ref_per_token_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    max_completion_length: int | None = None,
    num_items_in_batch: float | None = None,
    gradient_accumulation_steps: int = 1,
) -> LossOutput:
    """Loss of one micro-batch of ``(B, T)`` completion tokens, scaled for accumulation.

    ``num_items_in_batch`` (dapo) is the number of completion tokens in the whole optimizer
    step; ``max_completion_length`` (dr_grpo) is the constant per-sequence normaliser.
    """
    mask = mask.to(per_token_logps.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    old = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps
    coef_1 = torch.exp(per_token_logps - old)
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    per_token_kl = None
    if beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta > 0 needs the reference log-probabilities")
        delta = ref_per_token_logps - per_token_logps
        per_token_kl = torch.exp(delta) - delta - 1
        per_token_loss = per_token_loss + beta * per_token_kl

    accum = gradient_accumulation_steps
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
        policy_loss, loss = loss.detach(), loss / accum
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
        policy_loss, loss = loss.detach(), loss / accum
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
        policy_loss, loss = loss.detach(), loss / accum
    elif loss_type == "dapo":
        if num_items_in_batch is None:
            raise ValueError("dapo needs num_items_in_batch (completion tokens in the step)")
        normalizer = max(float(num_items_in_batch), 1.0)
        loss = (per_token_loss * mask).sum() / normalizer
        policy_loss = loss.detach()
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; use grpo, bnpo, dr_grpo or dapo")

    low = (coef_1 < 1 - epsilon_low) & (advantages < 0)
    high = (coef_1 > 1 + epsilon_high) & (advantages > 0)
    return LossOutput(
        loss=loss,
        policy_loss=float(policy_loss),
        kl=_masked_mean(per_token_kl.detach(), mask) if per_token_kl is not None else None,
        clip_low=_masked_mean(low.float(), mask),
        clip_high=_masked_mean(high.float(), mask),
        clip_region=_masked_mean((low | high).float(), mask),
        tokens=int(mask.sum()),
    )
