"""Paired bootstrap: how much one run beats another on the same questions, with a CI.

Both runs are scored on the same questions, so the uncertainty of their difference comes from
the per-question differences, not from two independent intervals (which overlap far more often
than the difference is uncertain). Each resample draws question indices with replacement and
applies them to both runs at once.

Resamples are drawn exactly as :func:`memfactory_core.metrics.stats.bootstrap_ci` draws them
(same generator, seed and block size), then turned into per-question counts, so the mean of
every metric (and of both runs) under one resample is a single matrix product. A comparison of
ten runs with a dozen metrics costs one draw per distinct question count instead of one per
metric and run; the interval of one run's metric equals ``bootstrap_ci``'s.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from threading import Lock
from typing import Any

import numpy as np

from memfactory_core.metrics.stats import _BLOCK_ELEMENTS

_CACHE_BYTES = 128 * 2**20
"""Resample counts kept for reuse (float64: 16 MB for 1,000 questions x 2,000 resamples)."""
_counts_cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
_cache_lock = Lock()
# Stands for an infinite relative change so that np.quantile can interpolate next to it.
_HUGE = 1e300


@dataclass(frozen=True)
class PairedDiff:
    """One metric of ``other`` against ``base`` on their ``n`` shared questions.

    ``diff`` = mean(other) - mean(base) with its percentile-bootstrap interval; ``rel`` =
    ``diff / |mean(base)|`` with its interval (None when the base mean is 0; an end is
    ``inf`` when more than the tail's share of resamples has a zero base mean).
    ``excludes_zero``: the interval of ``diff`` lies entirely above or below 0."""

    n: int
    base_mean: float
    other_mean: float
    diff: float
    diff_low: float
    diff_high: float
    rel: float | None
    rel_low: float | None
    rel_high: float | None
    excludes_zero: bool
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resample_counts(n: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """``(n_resamples, n)`` float64 matrix: how often each of ``n`` items is drawn in each
    resample. Drawn as ``bootstrap_ci`` draws its indices; recent ones are cached (up to
    128 MB), read-only."""
    if n < 1:
        raise ValueError(f"resample_counts needs at least one item, got {n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    key = (n, n_resamples, seed)
    with _cache_lock:
        found = _counts_cache.get(key)
        if found is not None:
            _counts_cache.move_to_end(key)
            return found
    rng = np.random.default_rng(seed)
    counts = np.empty((n_resamples, n), dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        flat = (idx + n * np.arange(stop - start)[:, None]).ravel()
        counts[start:stop] = np.bincount(flat, minlength=(stop - start) * n).reshape(-1, n)
    counts.setflags(write=False)
    with _cache_lock:
        _counts_cache[key] = counts
        total = sum(c.nbytes for c in _counts_cache.values())
        while total > _CACHE_BYTES and len(_counts_cache) > 1:
            _, dropped = _counts_cache.popitem(last=False)
            total -= dropped.nbytes
    return counts


def resampled_means(columns: np.ndarray, n_resamples: int = 2000, seed: int = 0,
                    clusters: Sequence[Any] | np.ndarray | None = None) -> np.ndarray:
    """Bootstrap means of each column of an ``(n, k)`` array: ``(n_resamples, k)``, every
    column resampled with the same question indices (that is what pairs them).

    With ``clusters`` (one label per row: the conversation or document a question belongs
    to), whole clusters are resampled instead of single rows (the cluster bootstrap: questions
    about one conversation are not independent), and each resample's mean is over the rows
    it drew."""
    data = np.asarray(columns, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    n = data.shape[0]
    if not np.all(np.isfinite(data)):
        raise ValueError("resampled_means got a NaN or infinite value")
    if clusters is None:
        return (resample_counts(n, n_resamples, seed) @ data) / n
    labels = np.asarray(clusters, dtype=object).reshape(-1)
    if labels.size != n:
        raise ValueError(f"clusters: {labels.size} labels for {n} rows")
    _, which = np.unique(labels.astype(str), return_inverse=True)
    counts = resample_counts(int(which.max()) + 1, n_resamples, seed)[:, which]
    drawn = counts.sum(axis=1, keepdims=True)
    return (counts @ data) / drawn


class ResampleBatch:
    """Resampled means of many arrays, computed together: arrays with the same number of rows
    (and no clusters) share one matrix product, which reads the resample counts once. ``add``
    returns a handle, ``run`` computes, ``[handle]`` reads a ``(n_resamples, k)`` result."""

    def __init__(self, n_resamples: int = 2000, seed: int = 0) -> None:
        self.n_resamples = n_resamples
        self.seed = seed
        self._items: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._results: list[np.ndarray | None] = []

    def add(self, data: np.ndarray, clusters: Sequence[Any] | np.ndarray | None = None
            ) -> int:
        array = np.asarray(data, dtype=np.float64)
        self._items.append((array[:, None] if array.ndim == 1 else array,
                            None if clusters is None else np.asarray(clusters, dtype=object)))
        self._results.append(None)
        return len(self._items) - 1

    def run(self) -> None:
        by_rows: dict[int, list[int]] = {}
        for i, (data, clusters) in enumerate(self._items):
            if self._results[i] is not None:
                continue
            if clusters is None and data.shape[0]:
                by_rows.setdefault(data.shape[0], []).append(i)
            elif data.shape[0]:
                self._results[i] = resampled_means(data, self.n_resamples, self.seed,
                                                   clusters)
        for handles in by_rows.values():
            stacked = np.concatenate([self._items[i][0] for i in handles], axis=1)
            means = resampled_means(stacked, self.n_resamples, self.seed)
            start = 0
            for i in handles:
                k = self._items[i][0].shape[1]
                self._results[i] = means[:, start:start + k]
                start += k

    def __getitem__(self, handle: int) -> np.ndarray:
        found = self._results[handle]
        if found is None:
            raise RuntimeError("ResampleBatch.run() has not computed this array yet")
        return found


def _interval(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each column of ``values`` (or of a 1-D array)."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha], axis=0)
    return low, high


def _check(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95,
            n_resamples: int = 2000, seed: int = 0,
            clusters: Sequence[Any] | np.ndarray | None = None) -> tuple[float, float, float]:
    """``(mean, low, high)``: the same numbers as ``stats.bootstrap_ci`` (to rounding),
    from cached resample counts; ``clusters``: see :func:`resampled_means`."""
    data = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    return mean_ci_many(data, confidence, n_resamples, seed, clusters)[0]


def mean_ci_many(columns: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0, clusters: Sequence[Any] | np.ndarray | None = None,
                 resampled: np.ndarray | None = None) -> list[tuple[float, float, float]]:
    """:func:`mean_ci` of each column of an ``(n, k)`` array, one resample draw for all
    (``resampled``: their :func:`resampled_means`, when the caller has them already)."""
    _check(confidence)
    data = np.asarray(columns, dtype=np.float64)
    n, k = data.shape
    if n == 0:
        return [(math.nan, math.nan, math.nan)] * k
    means = data.mean(axis=0)
    constant = np.all(data == data[0], axis=0)
    if n == 1 or constant.all():
        return [(float(m), float(m), float(m)) for m in means]
    if resampled is None:
        resampled = resampled_means(data, n_resamples, seed, clusters)
    low, high = _interval(resampled, confidence)
    return [(float(m), float(m), float(m)) if c else (float(m), float(lo), float(hi))
            for m, c, lo, hi in zip(means, constant, low, high, strict=True)]


def relative_change(diff: np.ndarray | float, base: np.ndarray | float) -> np.ndarray:
    """``diff / |base|``; where the base is 0: +inf / -inf by the sign of ``diff``, 0 when
    ``diff`` is 0 too."""
    d = np.asarray(diff, dtype=np.float64)
    b = np.abs(np.asarray(base, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = d / b
    zero = b == 0
    if not np.any(zero):
        return out
    signed = np.where(d > 0, np.inf, np.where(d < 0, -np.inf, 0.0))
    return np.where(zero, signed, out)


def paired_bootstrap(base: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray,
                     confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                     clusters: Sequence[Any] | np.ndarray | None = None) -> PairedDiff:
    """Paired percentile bootstrap of ``mean(other) - mean(base)`` and of the relative change,
    over questions given in the same order in both sequences (``clusters``: resample whole
    groups of questions, see :func:`resampled_means`)."""
    return paired_bootstrap_many(np.asarray(base, dtype=np.float64).reshape(-1, 1),
                                 np.asarray(other, dtype=np.float64).reshape(-1, 1),
                                 confidence, n_resamples, seed, clusters)[0]


def paired_bootstrap_many(base: np.ndarray, other: np.ndarray, confidence: float = 0.95,
                          n_resamples: int = 2000, seed: int = 0,
                          clusters: Sequence[Any] | np.ndarray | None = None,
                          base_resampled: np.ndarray | None = None,
                          diff_resampled: np.ndarray | None = None) -> list[PairedDiff]:
    """:func:`paired_bootstrap` of ``k`` metrics at once: ``base`` and ``other`` are
    ``(n, k)`` arrays (row i: question i in both), one resample draw for all of them.

    ``base_resampled`` / ``diff_resampled``: :func:`resampled_means` of ``base`` and of
    ``other - base`` with the same settings, when the caller has them already (several runs
    compared with one base on the same questions, or draws batched across runs)."""
    _check(confidence)
    a = np.asarray(base, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"paired scores need the same (questions, metrics) shape, got "
                         f"{a.shape} and {b.shape}")
    n, k = a.shape
    if n == 0:
        nan = math.nan
        return [PairedDiff(0, nan, nan, nan, nan, nan, None, None, None, False, confidence)
                for _ in range(k)]
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired_bootstrap got a NaN or infinite score")
    base_means = a.mean(axis=0)
    other_means = b.mean(axis=0)
    for name, given in (("base_resampled", base_resampled),
                        ("diff_resampled", diff_resampled)):
        if given is not None and given.shape != (n_resamples, k):
            raise ValueError(f"{name} has shape {given.shape}, expected {(n_resamples, k)}")
    if base_resampled is None and diff_resampled is None:
        means = resampled_means(np.concatenate([a, b - a], axis=1), n_resamples, seed,
                                clusters)
        base_res, diff_res = means[:, :k], means[:, k:]
    else:
        base_res = base_resampled if base_resampled is not None else resampled_means(
            a, n_resamples, seed, clusters)
        diff_res = diff_resampled if diff_resampled is not None else resampled_means(
            b - a, n_resamples, seed, clusters)
    diff_low, diff_high = _interval(diff_res, confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.clip(relative_change(diff_res, base_res), -_HUGE, _HUGE)
    rel_lows, rel_highs = _interval(ratios, confidence)
    out = []
    for j in range(k):
        diff = float(other_means[j] - base_means[j])
        deltas = b[:, j] - a[:, j]
        if n == 1 or np.all(deltas == deltas[0]):
            # every resample has the same difference (the relative one may still vary)
            low = high = diff
        else:
            low, high = float(diff_low[j]), float(diff_high[j])
        rel = rel_low = rel_high = None
        if base_means[j] != 0:
            rel = diff / abs(float(base_means[j]))
            rel_low, rel_high = _unclip(float(rel_lows[j])), _unclip(float(rel_highs[j]))
        out.append(PairedDiff(
            n=n, base_mean=float(base_means[j]), other_mean=float(other_means[j]), diff=diff,
            diff_low=low, diff_high=high, rel=rel, rel_low=rel_low, rel_high=rel_high,
            excludes_zero=bool(low > 0 or high < 0), confidence=confidence))
    return out


def _unclip(x: float) -> float:
    return x if abs(x) < _HUGE / 10 else math.copysign(math.inf, x)
