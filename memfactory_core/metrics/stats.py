"""Summary statistics for evaluation: bootstrap confidence intervals and avg@k."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Resampled indices are drawn in blocks of at most this many elements (bounded memory).
_BLOCK_ELEMENTS = 4_000_000


def bootstrap_ci(
    values: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap interval ``(mean, low, high)``, reproducible per seed.

    Plain numpy rather than scipy.stats.bootstrap: its default BCa interval degenerates (NaN
    and warnings) on constant data, which 0/1 scores often are, and scipy is not needed.
    Empty input gives NaNs; a single value ``v`` gives ``(v, v, v)``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    n = data.size
    if n == 0:
        return (math.nan, math.nan, math.nan)
    if not np.all(np.isfinite(data)):
        raise ValueError("bootstrap_ci got a NaN or infinite value")
    mean = float(data.mean())
    if n == 1 or np.all(data == data[0]):
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = data[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return (mean, float(low), float(high))


def avg_at_k(scores: Sequence[Sequence[float]]) -> list[float]:
    """avg@k: the mean of each question's k sampled scores (one value per question)."""
    out = []
    for i, samples in enumerate(scores):
        if len(samples) == 0:
            raise ValueError(f"avg_at_k: question {i} has no samples")
        out.append(float(np.mean(np.asarray(samples, dtype=np.float64))))
    return out


def summarize(
    name_to_values: Mapping[str, Sequence[float]],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """``{name: mean, f"{name}_ci95": [low, high]}`` for every metric (``ci90`` etc. likewise)."""
    suffix = f"_ci{round(confidence * 100):d}"
    out: dict[str, Any] = {}
    for name, values in name_to_values.items():
        mean, low, high = bootstrap_ci(values, confidence, n_resamples, seed)
        out[name] = mean
        out[name + suffix] = [low, high]
    return out
