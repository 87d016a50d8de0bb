"""GRPO training of memory policies: config, rewards, advantages, loss, trainer, export."""

import warnings

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

# peft probes ``model.is_gradient_checkpointing``, which transformers 5 deprecates: the warning
# is about peft's code, not the user's, and would fill every training log.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*",
                        category=FutureWarning)

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
