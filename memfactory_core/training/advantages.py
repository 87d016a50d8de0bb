"""Group-relative advantages, computed once per trajectory (MemAgent's multi-conversation
GRPO): every trained turn of a trajectory gets its trajectory's advantage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

ScaleRewards = Literal["group", "batch", "none"]


@dataclass
class GroupAdvantages:
    """Advantages of a batch of trajectories ordered group by group."""

    advantages: torch.Tensor  # (N,)
    #: groups whose rewards all agree (they teach nothing)
    zero_std_groups: int
    groups: int

    @property
    def frac_zero_std(self) -> float:
        return self.zero_std_groups / self.groups if self.groups else 0.0


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_rewards: ScaleRewards = "group"
) -> GroupAdvantages:
    """TRL's advantage rule: reward minus its group's mean, divided by the group's (``group``)
    or the batch's (``batch``) standard deviation plus 1e-4, or not divided (``none``:
    MemAgent and Dr. GRPO). ``rewards`` holds ``group_size`` consecutive trajectories per
    question."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    rewards = rewards.float()
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    group_std = grouped.std(dim=1) if group_size > 1 else torch.zeros(grouped.shape[0])
    advantages = rewards - mean
    if scale_rewards == "group":
        advantages = advantages / (group_std.repeat_interleave(group_size) + 1e-4)
    elif scale_rewards == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else torch.tensor(0.0)
        advantages = advantages / (batch_std + 1e-4)
    elif scale_rewards != "none":
        raise ValueError(f"scale_rewards must be group, batch or none, not {scale_rewards!r}")
    zero = torch.isclose(group_std, torch.zeros_like(group_std))
    return GroupAdvantages(advantages, int(zero.sum()), grouped.shape[0])
