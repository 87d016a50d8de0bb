"""Evaluation of pipelines over datasets."""

from memfactory_core.eval.config import DataConfig, EvalConfig, GenerationConfig, ModelConfig
from memfactory_core.eval.runner import evaluate, resolve_pipeline

__all__ = ["DataConfig", "EvalConfig", "GenerationConfig", "ModelConfig", "evaluate",
           "resolve_pipeline"]
