"""GRPO training of memory policies: config, rewards, advantages, loss, trainer, export."""

from memfactory_core.training.advantages import GroupAdvantages, group_advantages
from memfactory_core.training.callbacks import (
    ConsoleCallback,
    JsonlCallback,
    ReportToCallback,
    StopCallback,
    TrainingCallback,
    TrainState,
)
from memfactory_core.training.config import LoraConfig, RewardSpec, TrainConfig
from memfactory_core.training.loss import LossOutput, grpo_loss
from memfactory_core.training.rewards import REWARDS, RewardContext, compute_rewards

__all__ = [
    "REWARDS",
    "ConsoleCallback",
    "GroupAdvantages",
    "JsonlCallback",
    "LoraConfig",
    "LossOutput",
    "ReportToCallback",
    "RewardContext",
    "RewardSpec",
    "StopCallback",
    "TrainConfig",
    "TrainState",
    "TrainingCallback",
    "compute_rewards",
    "group_advantages",
    "grpo_loss",
]
