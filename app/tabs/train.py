"""The Train tab: a form generated from :class:`TrainConfig` (pipeline, model, data,
rewards with weights, LoRA, TRL-named GRPO settings); submitting queues a training run and
opens it in Runs."""

from __future__ import annotations

from typing import Any

from app.tabs.config_tab import create_config_tab
from memfactory_core.training.config import TrainConfig


def register(ctx: Any) -> None:
    ctx.shared["train"] = create_config_tab(ctx, "train", TrainConfig, "train")
