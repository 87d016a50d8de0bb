"""The Evaluate tab: a form generated from :class:`EvalConfig` (pipeline, model, data,
sampling); submitting queues an evaluation run and opens it in Runs."""

from __future__ import annotations

from typing import Any

from app.tabs.config_tab import create_config_tab
from memfactory_core.eval.config import EvalConfig


def register(ctx: Any) -> None:
    ctx.shared["evaluate"] = create_config_tab(ctx, "eval", EvalConfig, "evaluate")
