"""Rewards and metrics: answer scoring, answer extraction and summary statistics."""

from memfactory_core.metrics.qa import (
    exact_match,
    extract_boxed,
    f1,
    normalize_answer,
    strip_think,
    sub_exact_match,
)
from memfactory_core.metrics.stats import avg_at_k, bootstrap_ci, summarize

__all__ = [
    "avg_at_k",
    "bootstrap_ci",
    "exact_match",
    "extract_boxed",
    "f1",
    "normalize_answer",
    "strip_think",
    "sub_exact_match",
    "summarize",
]
