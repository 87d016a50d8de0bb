"""Pure functions that build the workbench's figures and tables from run-store data.

Nothing here touches Gradio or the database: callbacks fetch data, these functions shape it,
and tests check them without a browser. Curves are built from NumPy arrays into WebGL traces,
smoothed at full resolution and downsampled for display, so a chart of 20 runs with 5,000
steps each builds in well under a second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from plotly.graph_objects import Figure

from jobs.models import ACTIVE_STATUSES, Run

Series = tuple[Sequence[float], Sequence[float]]
"""``(steps, values)`` of one metric of one run, as :meth:`RunStore.metrics` returns it."""

DEFAULT_MAX_POINTS = 600
"""Points per trace on screen: about two per pixel column of a half-width subplot."""

CURVE_METRICS = ("reward", "kl", "completion_length")
"""The training metrics a run chart shows; every ``rewards/<component>`` joins after reward."""

PANEL_TITLES = {"reward": "reward", "kl": "KL", "completion_length": "completion length"}

RUN_TABLE_HEADERS = ["id", "status", "kind", "name", "model", "pipeline", "started",
                     "duration", "best reward"]

PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd",
    "#e6550d", "#31a354", "#756bb1", "#636363",
)

# Block length for the vectorised EMA: w**-L stays far below the float64 limit (e**709).
_EMA_EXPONENT_LIMIT = 500.0


def ema(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average.

    ``last = weight * last + (1 - weight) * value`` starting from 0, divided by
    ``1 - weight ** n`` (``n``: finite values seen so far), so the curve starts at the first
    value instead of rising from zero. Non-finite values stay as they are and do not move the
    average. ``weight`` 0 returns the values unchanged. Vectorised: no Python loop per point.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    x = np.asarray(values, dtype=np.float64)
    out = x.copy()
    finite = np.isfinite(x)
    xs = x[finite]
    n = xs.size
    if n == 0 or weight == 0.0:
        return out
    block = min(n, max(1, int(_EMA_EXPONENT_LIMIT / -math.log(weight))))
    powers = weight ** np.arange(block, dtype=np.float64)
    inverse = 1.0 / powers
    last = np.empty(n)
    carry = 0.0
    for start in range(0, n, block):
        k = min(block, n - start)
        p = powers[:k]
        acc = np.cumsum(xs[start:start + k] * inverse[:k])
        last[start:start + k] = p * (weight * carry + (1.0 - weight) * acc)
        carry = float(last[start + k - 1])
    # weight ** t <= e**-500 for t >= block: there the debiasing divisor is 1 in float64.
    last[:block] /= 1.0 - weight * powers
    out[finite] = last
    return out


def downsample_indices(values: Sequence[float] | np.ndarray,
                       max_points: int = DEFAULT_MAX_POINTS) -> np.ndarray:
    """Indices of at most ``max_points`` points that keep a curve's shape: the first and the
    last point and, in each of ``(max_points - 2) // 2`` equal buckets, the lowest and the
    highest value in order (min-max decimation: spikes survive, unlike striding)."""
    y = np.asarray(values, dtype=np.float64)
    n = y.size
    if n <= max_points:
        return np.arange(n)
    buckets = max(1, (max_points - 2) // 2)
    size = -(-n // buckets)
    padded = np.full(buckets * size, np.nan)
    padded[:n] = y
    grid = padded.reshape(buckets, size)
    # NaN (padding, or missing values) never wins: they become +inf for min, -inf for max.
    lows = np.where(np.isnan(grid), np.inf, grid).argmin(axis=1)
    highs = np.where(np.isnan(grid), -np.inf, grid).argmax(axis=1)
    offsets = np.arange(buckets) * size
    keep = np.zeros(buckets * size, dtype=bool)
    keep[[0, n - 1]] = True
    keep[lows + offsets] = True
    keep[highs + offsets] = True
    return np.flatnonzero(keep[:n])


def downsample(steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray,
               max_points: int = DEFAULT_MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` reduced to at most ``max_points`` points (see
    :func:`downsample_indices`)."""
    x = np.asarray(steps)
    y = np.asarray(values, dtype=np.float64)
    idx = downsample_indices(y, max_points)
    return x[idx], y[idx]


def default_panels(names: Iterable[str]) -> list[str]:
    """The curves a training chart shows, in order: ``reward``, each ``rewards/<component>``
    (sorted), ``kl``, ``completion_length``; only those present in ``names``."""
    present = set(names)
    components = sorted(n for n in present if n.startswith("rewards/"))
    ordered = ["reward", *components, "kl", "completion_length"]
    return [n for n in ordered if n in present]


def panel_title(name: str) -> str:
    """The heading of a metric's subplot (``rewards/f1`` -> ``reward: f1``)."""
    if name.startswith("rewards/"):
        return f"reward: {name.split('/', 1)[1]}"
    return PANEL_TITLES.get(name, name)


def run_color(position: int) -> str:
    """The colour of the ``position``-th run of a chart (the same in every subplot)."""
    return PALETTE[position % len(PALETTE)]


def empty_figure(message: str = "No metrics yet", height: int = 320) -> Figure:
    """A blank figure with a centred message (no run selected, no metrics logged yet)."""
    fig = Figure()
    fig.update_layout(
        height=height, template="plotly_white", margin={"l": 20, "r": 20, "t": 20, "b": 20},
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": message, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "showarrow": False, "font": {"size": 15, "color": "#666"}}],
    )
    return fig


def _grid(count: int, columns: int, height: int, gap_px: float
          ) -> list[tuple[list[float], list[float]]]:
    """Paper-coordinate ``(x_domain, y_domain)`` of ``count`` subplots, row by row."""
    rows = -(-count // columns)
    h_gap = 0.08 if columns > 1 else 0.0
    v_gap = min(0.3, gap_px / height) if rows > 1 else 0.0
    width = (1.0 - h_gap * (columns - 1)) / columns
    cell = (1.0 - v_gap * (rows - 1)) / rows
    out = []
    for i in range(count):
        r, c = divmod(i, columns)
        x0 = c * (width + h_gap)
        y1 = 1.0 - r * (cell + v_gap)
        out.append(([x0, x0 + width], [max(0.0, y1 - cell), y1]))
    return out


def run_curves_figure(
    metrics: Mapping[int, Mapping[str, Series]],
    labels: Mapping[int, str] | None = None,
    *,
    smoothing: float = 0.6,
    panels: Sequence[str] | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
    columns: int = 2,
    show_raw: bool = True,
    row_height: int = 280,
    webgl: bool = True,
    uirevision: str | int | None = None,
) -> Figure:
    """Training curves of one or more runs: one subplot per metric, one colour per run.

    ``metrics`` is :meth:`RunStore.metrics` output (``{run_id: {name: (steps, values)}}``);
    ``labels`` names the runs in the legend (default ``run <id>``). ``panels`` picks the
    metrics (default :func:`default_panels` of every name present). With ``smoothing`` > 0
    each curve is the debiased EMA of the values, drawn over the raw values in a faint line
    (``show_raw``). Every trace holds at most ``max_points`` points. ``uirevision`` keeps the
    user's zoom and legend choices across refreshes of the same selection.
    """
    labels = labels or {}
    names = panels if panels is not None else default_panels(
        name for series in metrics.values() for name in series)
    names = [n for n in names if any(len(series.get(n, ((), ()))[0]) for series in
                                     metrics.values())]
    if not names:
        return empty_figure("No training curves yet" if metrics else "No run selected")
    columns = max(1, min(columns, len(names)))
    rows = -(-len(names) // columns)
    height = 90 + rows * row_height
    domains = _grid(len(names), columns, height, gap_px=70.0)
    trace_type = "scattergl" if webgl else "scatter"
    traces: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "height": height, "template": "plotly_white", "hovermode": "closest",
        "margin": {"l": 50, "r": 20, "t": 60, "b": 40}, "uirevision": uirevision,
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0 + 40 / height,
                   "xanchor": "left", "x": 0.0},
    }
    annotations: list[dict[str, Any]] = []
    for p, (name, (x_dom, y_dom)) in enumerate(zip(names, domains, strict=True)):
        suffix = "" if p == 0 else str(p + 1)
        bottom = p >= len(names) - columns
        layout[f"xaxis{suffix}"] = {"domain": x_dom, "anchor": f"y{suffix}", "zeroline": False,
                                    "title": {"text": "step" if bottom else ""}}
        layout[f"yaxis{suffix}"] = {"domain": y_dom, "anchor": f"x{suffix}", "zeroline": False}
        annotations.append({"text": f"<b>{panel_title(name)}</b>", "xref": "paper",
                            "yref": "paper", "x": (x_dom[0] + x_dom[1]) / 2, "y": y_dom[1],
                            "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                            "font": {"size": 13}})
    layout["annotations"] = annotations
    legend_shown: set[int] = set()
    for position, (run_id, series) in enumerate(metrics.items()):
        color = run_color(position)
        label = labels.get(run_id, f"run {run_id}")
        for p, name in enumerate(names):
            if name not in series or not len(series[name][0]):
                continue
            steps = np.asarray(series[name][0])
            raw = np.asarray(series[name][1], dtype=np.float64)
            idx = downsample_indices(raw, max_points)
            x = steps[idx]
            axes = {"xaxis": "x" if p == 0 else f"x{p + 1}",
                    "yaxis": "y" if p == 0 else f"y{p + 1}"}
            # float32 halves the payload (base64 typed arrays) and is exact enough to draw.
            if smoothing > 0 and show_raw and raw.size > 1:
                traces.append({
                    "type": trace_type, "x": x, "y": raw[idx].astype(np.float32),
                    "mode": "lines", "opacity": 0.25, "line": {"color": color, "width": 1},
                    "hoverinfo": "skip", "showlegend": False, "legendgroup": str(run_id),
                    "name": label, **axes})
            y = (ema(raw, smoothing) if smoothing > 0 else raw)[idx].astype(np.float32)
            first = run_id not in legend_shown
            legend_shown.add(run_id)
            traces.append({
                "type": trace_type, "x": x, "y": y,
                "mode": "lines+markers" if idx.size <= 50 else "lines",
                "line": {"color": color, "width": 2}, "marker": {"color": color, "size": 5},
                "name": label, "legendgroup": str(run_id), "showlegend": first,
                "hovertemplate": f"{label}<br>{name}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
                **axes})
    # The traces become go.Scattergl objects either way; validating them costs about 2 ms
    # each. The unit tests rebuild the figure with validation on, so every key is checked.
    return Figure(data=traces, layout=layout, _validate=False)


# ---------------------------------------------------------------------------- tables
def format_time(t: float | None) -> str:
    """A UNIX time as local ``YYYY-MM-DD HH:MM:SS`` (empty for None)."""
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else ""


def format_duration(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss`` (empty for None)."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def run_duration(run: Run, now: float | None = None) -> float | None:
    """Seconds a run has run: until it finished, or until ``now`` while it is active."""
    if run.started_at is None:
        return None
    if run.finished_at is not None:
        return run.finished_at - run.started_at
    if run.status in ACTIVE_STATUSES:
        return (time.time() if now is None else now) - run.started_at
    return None


def short_model(model: str | None) -> str:
    """A model name for a narrow column: a path keeps its last two parts."""
    if not model:
        return ""
    if model.startswith(("/", "~", ".")) or model.count("/") > 1:
        parts = [p for p in model.replace("\\", "/").split("/") if p]
        return "…/" + "/".join(parts[-2:]) if len(parts) > 2 else model
    return model


def run_table_rows(runs: Sequence[Run], best_rewards: Mapping[int, float | None] | None = None,
                   now: float | None = None) -> list[list[Any]]:
    """One row per run under :data:`RUN_TABLE_HEADERS`: id, status, kind, name, model,
    pipeline, start time, duration and best reward (3 decimals; empty without one)."""
    best_rewards = best_rewards or {}
    rows = []
    for run in runs:
        best = best_rewards.get(run.id)
        rows.append([
            run.id, run.status, run.kind, run.name or "", short_model(run.model),
            run.pipeline or "", format_time(run.started_at),
            format_duration(run_duration(run, now)),
            f"{best:.3f}" if best is not None and math.isfinite(best) else "",
        ])
    return rows
