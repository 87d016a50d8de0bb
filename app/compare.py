"""Comparing runs, without Gradio: pick runs, diff their configs, tabulate their evaluation
metrics against a base run with paired bootstrap intervals, plot them, list the questions one
run wins and loses against another, and export all of it (CSV, JSON, standalone HTML).

The Compare tab, the API endpoints and ``bench/compare.py`` call these functions; tests check
them without a browser. An evaluation's numbers come from its ``results.json``: the per-question
records when it has them (each metric's interval is then the same bootstrap the evaluation
summary uses), else the summary alone (no paired differences then).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock
from typing import Any, Protocol

import numpy as np
import orjson
from plotly.graph_objects import Figure

from app.charts import empty_figure, run_color
from memfactory_core.errors import MemFactoryError
from memfactory_core.metrics.paired import (
    PairedDiff,
    ResampleBatch,
    mean_ci,
    mean_ci_many,
    paired_bootstrap_many,
)

CONFIDENCE = 0.95
N_RESAMPLES = 2000
SEED = 0

IGNORED_CONFIG_KEYS = ("output_dir",)
"""Settings left out of the config diff by default: every run has its own output folder."""

NOT_METRICS = frozenset({
    "id", "episode_id", "docs", "document_tokens", "category", "sample", "samples", "turn",
    "session", "index", "step", "seconds", "tokens", "n", "question", "answers", "prediction",
    "predictions", "meta", "trace",
})
"""Numeric record fields that describe a question rather than score an answer."""

MAX_PARALLEL_SETTINGS = 12
QUESTION_LIST_LIMIT = 200
ABSENT = "—"


class CompareError(MemFactoryError):
    """A comparison cannot be built from what was given (named in the message)."""


class RunLike(Protocol):
    """What the comparison reads from a stored run (``jobs.models.Run`` has all of it)."""

    id: int
    kind: str
    status: str
    name: str | None
    pipeline: str | None
    model: str | None
    tags: list[Any]
    notes: str | None
    config: dict[str, Any]
    summary: dict[str, Any]
    output_dir: str | None


# --------------------------------------------------------------------- picking runs
def _listed(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s and s.strip()]


def pick_runs(runs: Iterable[RunLike], kind: str | Sequence[str] | None = None,
              status: str | Sequence[str] | None = None,
              pipeline: str | Sequence[str] | None = None,
              tag: str | Sequence[str] | None = None) -> list[RunLike]:
    """The runs matching every filter given: one value or several (any of them matches;
    a string may list several separated by commas). ``tag``: runs carrying any of the tags."""
    kinds, statuses, pipelines, tags = map(_listed, (kind, status, pipeline, tag))
    out = []
    for run in runs:
        if kinds and run.kind not in kinds:
            continue
        if statuses and run.status not in statuses:
            continue
        if pipelines and (run.pipeline or "") not in pipelines:
            continue
        if tags and not set(tags) & {str(t) for t in (run.tags or [])}:
            continue
        out.append(run)
    return out


def filter_options(runs: Iterable[RunLike]) -> dict[str, list[str]]:
    """The values each filter can take among ``runs``: kinds, statuses, pipelines, tags."""
    found: dict[str, set[str]] = {"kind": set(), "status": set(), "pipeline": set(),
                                  "tag": set()}
    for run in runs:
        found["kind"].add(run.kind)
        found["status"].add(run.status)
        if run.pipeline:
            found["pipeline"].add(run.pipeline)
        found["tag"].update(str(t) for t in (run.tags or []))
    return {k: sorted(v) for k, v in found.items()}


def parse_tags(text: str | Sequence[str] | None) -> list[str]:
    """Tags typed as ``a, b c`` (commas or spaces), without repeats, in order."""
    if text is None:
        return []
    items = text.replace(",", " ").split() if isinstance(text, str) else [
        str(t).strip() for t in text]
    out: list[str] = []
    for t in items:
        if t and t not in out:
            if len(t) > 64:
                raise CompareError(f"tag {t[:20]!r}... is longer than 64 characters")
            out.append(t)
    return out


NOTES_LIMIT = 20_000


def check_notes(text: str | None) -> str | None:
    """Notes as stored (None when empty); refuses notes longer than :data:`NOTES_LIMIT`."""
    if text is None or not str(text).strip():
        return None
    if len(text) > NOTES_LIMIT:
        raise CompareError(f"notes are {len(text):,} characters long; at most "
                           f"{NOTES_LIMIT:,} are kept")
    return str(text)


def run_label(run: RunLike) -> str:
    """``#12 name`` (or ``#12 eval``)."""
    return f"#{run.id} {run.name or run.kind}"


# ------------------------------------------------------------------- config diff
def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``data.docs``); lists of dicts indexed
    (``ingest.0.component``); other lists stay values."""
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        if not value and prefix:
            out[prefix] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value and any(isinstance(v, Mapping) for v in value):
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix or "value"] = value
    return out


def _same(values: Sequence[Any]) -> bool:
    first = values[0]
    return all(v == first and type(v) is type(first) for v in values[1:])


def config_diff(configs: Mapping[str, Mapping[str, Any] | None], differences_only: bool = True,
                ignore: Sequence[str] = IGNORED_CONFIG_KEYS) -> list[dict[str, Any]]:
    """One row per dotted setting: ``{"key", "values": [one per run, ABSENT when missing],
    "differs"}``, sorted by key. ``differences_only`` keeps the settings whose values are not
    all equal (one run lacking it counts as a difference); ``ignore`` drops keys (and what is
    under them)."""
    flat = {label: flatten(dict(cfg or {})) for label, cfg in configs.items()}
    keys = sorted({k for f in flat.values() for k in f})
    rows = []
    for key in keys:
        if any(key == i or key.startswith(i + ".") for i in ignore):
            continue
        values = [f.get(key, ABSENT) for f in flat.values()]
        differs = len(values) > 1 and not _same(values)
        if differences_only and not differs:
            continue
        rows.append({"key": key, "values": values, "differs": differs})
    return rows


def display_value(value: Any) -> str:
    """A setting as a table cell: strings bare, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value, default=str, separators=(", ", ": "))


# --------------------------------------------------------------- evaluation results
RecordKey = tuple[Any, ...]


@dataclass
class RunResults:
    """An evaluation's records reduced to what a comparison needs (no traces)."""

    label: str
    summary: dict[str, Any]
    config: dict[str, Any]
    metrics: list[str]
    keys: list[RecordKey] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    records: list[dict[str, Any]] = field(default_factory=list)
    category: list[Any] = field(default_factory=list)
    category_names: dict[Any, str] = field(default_factory=dict)
    docs: list[Any] = field(default_factory=list)
    path: str | None = None
    run_id: int | None = None

    @property
    def has_records(self) -> bool:
        return bool(self.keys)

    def index(self) -> dict[RecordKey, int]:
        return {k: i for i, k in enumerate(self.keys)}


def default_metric(runs: Sequence[RunResults]) -> str | None:
    """The metric to colour and list questions by: the first whose per-question scores vary
    in some run (exact match is all zeros for a small model's long answers), else the first."""
    names = list(dict.fromkeys(m for r in runs for m in r.metrics))
    for name in names:
        for run in runs:
            if name in run.metrics and run.scores.size:
                column = run.scores[:, run.metrics.index(name)]
                column = column[~np.isnan(column)]
                if column.size and column.min() != column.max():
                    return name
    return names[0] if names else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and (not isinstance(value, float)
                                               or math.isfinite(value))


def metric_names(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The scores to compare: numeric record fields that score an answer (not
    :data:`NOT_METRICS`), those the summary gives an interval for first; without records,
    the summary's metrics with an interval."""
    with_ci = [k for k in summary if not k.endswith(("_ci95", "_ci90", "_ci99"))
               and _is_number(summary[k]) and f"{k}_ci95" in summary]
    if not records:
        return with_ci
    seen: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in seen and k not in NOT_METRICS and (isinstance(v, bool)
                                                           or _is_number(v)):
                seen[k] = None
    found = [k for k in with_ci if k in seen] + [k for k in seen if k not in with_ci]
    return found


def _record_meta(record: Mapping[str, Any], field_name: str, *aliases: str) -> Any:
    if record.get(field_name) is not None:
        return record[field_name]
    meta = record.get("meta")
    if isinstance(meta, Mapping):
        for name in (field_name, *aliases):
            if meta.get(name) is not None:
                return meta[name]
    return None


def record_key(record: Mapping[str, Any]) -> RecordKey:
    """What pairs a record with another run's: episode, question id, context length and,
    for results with one record per sample, the sample."""
    return (record.get("episode_id"), str(record["id"]), _record_meta(record, "docs", "n_docs"),
            record.get("sample"))


def results_from_data(data: Mapping[str, Any], label: str, source: str = "results",
                      config: Mapping[str, Any] | None = None) -> RunResults:
    """A ``results.json`` document as :class:`RunResults`. Raises :class:`CompareError` naming
    ``source`` and the record for a document that does not have results' shape."""
    if not isinstance(data, Mapping) or not isinstance(data.get("summary", {}), Mapping):
        raise CompareError(f"{source}: not evaluation results (expected an object with "
                           "'summary' and 'records')")
    summary = dict(data.get("summary") or {})
    records = data.get("records") or []
    if not isinstance(records, list):
        raise CompareError(f"{source}: 'records' must be a list")
    cfg = dict(config if config is not None else summary.get("config") or {})
    summary.pop("config", None)
    summary.pop("pipeline", None)
    metrics = metric_names(summary, records)
    keys: list[RecordKey] = []
    light: list[dict[str, Any]] = []
    category: list[Any] = []
    docs: list[Any] = []
    scores = np.full((len(records), len(metrics)), np.nan)
    seen: dict[RecordKey, int] = {}
    names: dict[Any, str] = {}
    for i, r in enumerate(records):
        if not isinstance(r, Mapping) or r.get("id") is None:
            raise CompareError(f"{source}: record {i} has no 'id'")
        key = record_key(r)
        if key in seen:
            raise CompareError(f"{source}: records {seen[key]} and {i} are the same question "
                               f"(id {key[1]!r}, docs {key[2]!r}); cannot pair them")
        seen[key] = i
        keys.append(key)
        for j, m in enumerate(metrics):
            v = r.get(m)
            if isinstance(v, bool) or _is_number(v):
                scores[i, j] = float(v)
        category.append(_record_meta(r, "category"))
        if category[-1] is not None and isinstance(r.get("category_name"), str):
            names.setdefault(category[-1], r["category_name"])
        docs.append(key[2])
        light.append({"id": key[1], "docs": key[2], "category": category[-1],
                      "question": r.get("question"), "answers": r.get("answers"),
                      "prediction": r.get("prediction")})
    return RunResults(label=label, summary=summary, config=cfg, metrics=metrics, keys=keys,
                      scores=scores, records=light, category=category, category_names=names,
                      docs=docs)


_results_cache: OrderedDict[tuple[str, int, int], RunResults] = OrderedDict()
_trace_cache: OrderedDict[tuple[str, int, int], dict[RecordKey, dict[str, Any]]] = OrderedDict()
_cache_lock = Lock()
RESULTS_CACHE_ENTRIES = 32
TRACE_CACHE_ENTRIES = 2


def _file_id(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CompareError(f"{path}: cannot read it ({err.strerror})") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:  # Python's json module writes NaN for an undefined summary; orjson refuses it
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise CompareError(f"{path}: not valid JSON ({err})") from None


def load_results(path: str | os.PathLike[str], label: str | None = None,
                 config: Mapping[str, Any] | None = None) -> RunResults:
    """A ``results.json`` file as :class:`RunResults`; parsed once per file version (path,
    modification time and size), later calls reuse it."""
    p = Path(path)
    if not p.is_file():
        raise CompareError(f"{p}: no such results file")
    fid = _file_id(p)
    with _cache_lock:
        cached = _results_cache.get(fid)
        if cached is not None:
            _results_cache.move_to_end(fid)
    if cached is None:
        cached = results_from_data(_read_json(p), p.parent.name, source=str(p))
        cached.path = str(p)
        with _cache_lock:
            _results_cache[fid] = cached
            while len(_results_cache) > RESULTS_CACHE_ENTRIES:
                _results_cache.popitem(last=False)
    out = RunResults(**{**cached.__dict__})
    if label is not None:
        out.label = label
    if config is not None:
        out.config = dict(config)
    return out


def load_traces(path: str | os.PathLike[str]) -> dict[RecordKey, dict[str, Any]]:
    """``{record key: trace}`` of a results file (the last two files read stay cached)."""
    p = Path(path)
    fid = _file_id(p)
    with _cache_lock:
        cached = _trace_cache.get(fid)
    if cached is not None:
        return cached
    data = _read_json(p)
    traces = {record_key(r): r.get("trace") or {} for r in data.get("records") or []
              if isinstance(r, Mapping) and r.get("id") is not None}
    with _cache_lock:
        _trace_cache[fid] = traces
        while len(_trace_cache) > TRACE_CACHE_ENTRIES:
            _trace_cache.popitem(last=False)
    return traces


def results_path(run: RunLike) -> Path | None:
    """Where a run's ``results.json`` is, if it wrote one."""
    if not run.output_dir:
        return None
    path = Path(run.output_dir) / "results.json"
    return path if path.is_file() else None


def run_results(run: RunLike,
                records: Callable[[int], list[dict[str, Any]]] | None = None) -> RunResults:
    """A stored run's results: its ``results.json`` when it has one; else the evaluation
    records ``records(run id)`` returns (the store's copies), if any, with its summary; else
    its summary alone (a training run: no records, its summary's numbers)."""
    path = results_path(run)
    if path is not None:
        out = load_results(path, label=run_label(run), config=run.config or {})
        out.run_id = run.id
        return out
    summary = {k: v for k, v in (run.summary or {}).items() if k not in ("config", "pipeline")}
    stored = records(run.id) if records is not None and run.kind == "eval" else []
    if stored:
        out = results_from_data({"summary": summary, "records": stored}, run_label(run),
                                source=f"run {run.id} records", config=run.config or {})
    else:
        out = RunResults(label=run_label(run), summary=summary, config=dict(run.config or {}),
                         metrics=metric_names(summary, []))
    out.run_id = run.id
    return out


# --------------------------------------------------------------------- evaluation table
TABLE_COLUMNS = ["group", "run", "metric", "n", "mean", "ci_low", "ci_high", "n_paired",
                 "diff", "diff_low", "diff_high", "rel", "rel_low", "rel_high", "significant"]
"""The evaluation table's columns (CSV export too). ``diff``/``rel`` are against the base run,
over the questions both answered (``n_paired``); ``significant``: the paired interval of the
difference excludes 0."""


def _summary_ci(summary: Mapping[str, Any], metric: str) -> tuple[float, float, float] | None:
    mean = summary.get(metric)
    ci = summary.get(f"{metric}_ci95")
    if _is_number(mean) and isinstance(ci, list | tuple) and len(ci) == 2 \
            and all(_is_number(c) for c in ci):
        return float(mean), float(ci[0]), float(ci[1])
    return None


def _groups(runs: Sequence[RunResults]) -> list[tuple[str, str, Any]]:
    """``(label, field, value)`` of each sub-group the table shows: every context length and
    every category, when the records hold more than one of them."""
    out: list[tuple[str, str, Any]] = [("all", "", None)]
    for name in ("docs", "category"):
        values = {v for r in runs for v in getattr(r, name) if v is not None}
        if len(values) > 1:
            ordered = sorted(values, key=lambda v: (not _is_number(v), v if _is_number(v)
                                                    else str(v)))
            titles = {k: t for r in runs for k, t in r.category_names.items()} \
                if name == "category" else {}
            out += [(f"{name}={v}" + (f" ({titles[v]})" if v in titles else ""), name, v)
                    for v in ordered]
    return out


def _mask(run: RunResults, field_name: str, value: Any) -> np.ndarray:
    if not field_name:
        return np.ones(len(run.keys), dtype=bool)
    return np.array([v == value for v in getattr(run, field_name)], dtype=bool)


def _row(group: str, run: RunResults, metric: str, n: int,
         stats: tuple[float, float, float] | None, diff: PairedDiff | None) -> dict[str, Any]:
    mean, low, high = stats if stats is not None else (math.nan, math.nan, math.nan)
    row: dict[str, Any] = {"group": group, "run": run.label, "metric": metric, "n": n,
                           "mean": mean, "ci_low": low, "ci_high": high, "n_paired": None,
                           "diff": None, "diff_low": None, "diff_high": None, "rel": None,
                           "rel_low": None, "rel_high": None, "significant": None}
    if diff is not None:
        row.update(n_paired=diff.n, diff=diff.diff, diff_low=diff.diff_low,
                   diff_high=diff.diff_high, rel=diff.rel, rel_low=diff.rel_low,
                   rel_high=diff.rel_high, significant=diff.excludes_zero)
    return row


def pair_indices(base: RunResults, other: RunResults) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the questions both runs answered, in the base's order."""
    where = other.index()
    bi, oi = [], []
    for i, key in enumerate(base.keys):
        j = where.get(key)
        if j is not None:
            bi.append(i)
            oi.append(j)
    return np.asarray(bi, dtype=np.int64), np.asarray(oi, dtype=np.int64)


def episodes(run: RunResults, rows: np.ndarray) -> np.ndarray:
    """The episode (conversation, document) of each of ``rows``: the cluster a question
    belongs to; a question without one is its own."""
    return np.array([str(run.keys[i][0] if run.keys[i][0] is not None else run.keys[i][1])
                     for i in rows], dtype=object)


Finish = Callable[[ResampleBatch], dict[str, Any]]


def _paired_diffs(base: RunResults, other: RunResults, bi: np.ndarray, oi: np.ndarray,
                  metrics: Sequence[str], confidence: float, batch: ResampleBatch,
                  cluster: bool = False, memo: dict[Any, int] | None = None) -> Finish:
    """Plan the paired differences of ``metrics`` on the rows given: the arrays to resample
    go into ``batch``; the returned function reads them once it ran and gives
    ``{metric: PairedDiff}``. Metrics scored on every paired row share one draw; the others
    are paired on the rows where both runs have a score. ``cluster``: resample the base's
    episodes. ``memo`` shares the base's draws between runs paired on the same questions."""
    cols = [(m, base.metrics.index(m), other.metrics.index(m)) for m in metrics
            if m in base.metrics and m in other.metrics]
    if not cols:
        return lambda _: {}
    a = base.scores[bi][:, [c[1] for c in cols]]
    b = other.scores[oi][:, [c[2] for c in cols]]
    both = np.isfinite(a) & np.isfinite(b)
    full = np.flatnonzero(both.all(axis=0))
    groups = episodes(base, bi) if cluster else None
    n_resamples, seed = batch.n_resamples, batch.seed
    base_handle = diff_handle = None
    if full.size and bi.size:
        key = (bi.tobytes(), tuple(cols[j][1] for j in full))
        base_handle = memo.get(key) if memo is not None else None
        if base_handle is None:
            base_handle = batch.add(a[:, full], groups)
            if memo is not None:
                memo[key] = base_handle
        diff_handle = batch.add(b[:, full] - a[:, full], groups)

    def finish(done: ResampleBatch) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if full.size:
            diffs = paired_bootstrap_many(
                a[:, full], b[:, full], confidence, n_resamples, seed, groups,
                None if base_handle is None else done[base_handle],
                None if diff_handle is None else done[diff_handle])
            out.update({cols[j][0]: d for j, d in zip(full, diffs, strict=True)})
        for j in np.flatnonzero(~both.all(axis=0)):
            rows = both[:, j]
            out[cols[j][0]] = paired_bootstrap_many(
                a[rows, j:j + 1], b[rows, j:j + 1], confidence, n_resamples, seed,
                None if groups is None else groups[rows])[0]
        return out

    return finish


def _record_stats(run: RunResults, mask: np.ndarray, metrics: Sequence[str],
                  confidence: float, batch: ResampleBatch, cluster: bool = False) -> Finish:
    """Plan ``{metric: (n, (mean, low, high))}`` over the masked records, as
    :func:`_paired_diffs` plans its differences."""
    if not metrics:
        return lambda _: {}
    sub = run.scores[mask][:, [run.metrics.index(m) for m in metrics]]
    groups = episodes(run, np.flatnonzero(mask)) if cluster else None
    finite = np.isfinite(sub)
    full = np.flatnonzero(finite.all(axis=0))
    handle = batch.add(sub[:, full], groups) if sub.shape[0] and full.size else None
    n_resamples, seed = batch.n_resamples, batch.seed

    def finish(done: ResampleBatch) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if handle is not None:
            cis = mean_ci_many(sub[:, full], confidence, n_resamples, seed, groups,
                               done[handle])
            out.update({metrics[j]: (int(sub.shape[0]), ci)
                        for j, ci in zip(full, cis, strict=True)})
        for j in np.flatnonzero(~finite.all(axis=0)):
            kept = finite[:, j]
            if kept.any():
                out[metrics[j]] = (int(kept.sum()), mean_ci(
                    sub[kept, j], confidence, n_resamples, seed,
                    None if groups is None else groups[kept]))
        return out

    return finish


def _summary_stats(run: RunResults, metric: str, field_name: str, value: Any
                   ) -> tuple[int, tuple[float, float, float]] | None:
    """A metric's interval from the summary (all questions, or one context length)."""
    part: Any = run.summary
    if field_name:
        groups = run.summary.get("by_docs" if field_name == "docs" else "by_category")
        part = groups.get(str(value)) if isinstance(groups, Mapping) else None
    if not isinstance(part, Mapping):
        return None
    ci = _summary_ci(part, metric)
    return None if ci is None else (int(part.get("n") or 0), ci)


def evaluation_table(runs: Sequence[RunResults], base: int | None = 0,
                     metrics: Sequence[str] | None = None, confidence: float = CONFIDENCE,
                     n_resamples: int = N_RESAMPLES, seed: int = SEED,
                     cluster: bool = False) -> list[dict[str, Any]]:
    """Rows of :data:`TABLE_COLUMNS`: for each group (all questions, then each context length
    and category when there are several), each run and each metric, the mean with its
    bootstrap interval and, for every run but the base (``runs[base]``; None: no base), the
    paired difference against the base with its interval. ``cluster``: resample whole
    episodes (the questions of one conversation) instead of single questions, for every
    interval computed from records."""
    if base is not None and not 0 <= base < len(runs):
        raise CompareError(f"the base run must be one of the {len(runs)} compared runs")
    names = list(metrics) if metrics is not None else list(dict.fromkeys(
        m for r in runs for m in r.metrics))
    paired_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if base is not None and runs[base].has_records:
        paired_rows = {i: pair_indices(runs[base], r) for i, r in enumerate(runs)
                       if i != base and r.has_records}
    # plan every interval first, then draw: arrays with as many rows share a product
    batch = ResampleBatch(n_resamples, seed)
    plans = []
    for group, field_name, value in _groups(runs):
        masks = {i: _mask(r, field_name, value) for i, r in enumerate(runs) if r.has_records}
        pairs: dict[int, Finish] = {}
        memo: dict[Any, int] = {}
        for i, (bi, oi) in paired_rows.items():
            assert base is not None
            keep = masks[base][bi] & masks[i][oi]
            pairs[i] = _paired_diffs(runs[base], runs[i], bi[keep], oi[keep], names,
                                     confidence, batch, cluster, memo)
        own = {i: _record_stats(r, masks[i], [m for m in names if m in r.metrics],
                                confidence, batch, cluster)
               for i, r in enumerate(runs) if r.has_records}
        plans.append((group, field_name, value, pairs, own))
    batch.run()
    rows: list[dict[str, Any]] = []
    for group, field_name, value, pairs, own in plans:
        diffs = {i: finish(batch) for i, finish in pairs.items()}
        for i, r in enumerate(runs):
            present = [m for m in names if m in r.metrics]
            stats = own[i](batch) if i in own else {
                m: _summary_stats(r, m, field_name, value) for m in present}
            for metric in present:
                found = stats.get(metric)
                if found is None:
                    continue
                n, ci = found
                rows.append(_row(group, r, metric, n, ci, diffs.get(i, {}).get(metric)))
    return rows


def format_ci(mean: float | None, low: float | None, high: float | None,
              percent: bool = False) -> str:
    """``0.412 [0.380, 0.445]`` (``+12.5% [+3.1%, +22.0%]`` with ``percent``); empty for None."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""

    def f(x: float | None) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "?"
        if math.isinf(x):
            return "+inf" if x > 0 else "-inf"
        return f"{x * 100:+.1f}%" if percent else f"{x:.3f}"

    if low is None or high is None:
        return f(mean)
    return f"{f(mean)} [{f(low)}, {f(high)}]"


DISPLAY_COLUMNS = ["group", "run", "metric", "n", "value [95% CI]", "n paired",
                   "diff vs base [95% CI]", "relative [95% CI]", ""]


def display_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The table as the page shows it (:data:`DISPLAY_COLUMNS`); ``*`` marks a difference
    whose paired interval excludes 0."""
    out = []
    for r in rows:
        out.append([r["group"], r["run"], r["metric"], r["n"],
                    format_ci(r["mean"], r["ci_low"], r["ci_high"]),
                    "" if r["n_paired"] is None else r["n_paired"],
                    "" if r["diff"] is None else format_ci(r["diff"], r["diff_low"],
                                                           r["diff_high"]),
                    "" if r["rel"] is None else format_ci(r["rel"], r["rel_low"], r["rel_high"],
                                                          percent=True),
                    "*" if r["significant"] else ""])
    return out


# ------------------------------------------------------------------ per-question view
def question_diffs(base: RunResults, other: RunResults, metric: str,
                   limit: int = QUESTION_LIST_LIMIT) -> dict[str, Any]:
    """Where ``other`` scores above the base on ``metric`` (wins) and below (losses), biggest
    gaps first, at most ``limit`` of each; ``ties``: how many questions score the same."""
    if metric not in base.metrics or metric not in other.metrics:
        raise CompareError(f"metric {metric!r} is not in both runs (base has "
                           f"{', '.join(base.metrics) or 'none'}; the other has "
                           f"{', '.join(other.metrics) or 'none'})")
    bi, oi = pair_indices(base, other)
    a = base.scores[bi, base.metrics.index(metric)]
    b = other.scores[oi, other.metrics.index(metric)]
    ok = np.isfinite(a) & np.isfinite(b)
    bi, oi, a, b = bi[ok], oi[ok], a[ok], b[ok]
    delta = b - a
    order = np.argsort(-np.abs(delta), kind="stable")

    def item(k: int) -> dict[str, Any]:
        rb, ro = base.records[bi[k]], other.records[oi[k]]
        return {"key": list(base.keys[bi[k]]), "id": rb["id"], "docs": rb["docs"],
                "category": rb["category"], "question": rb["question"],
                "answers": rb["answers"], "base_prediction": rb["prediction"],
                "other_prediction": ro["prediction"], "base_score": float(a[k]),
                "other_score": float(b[k]), "delta": float(delta[k])}

    wins = [item(k) for k in order if delta[k] > 0][:limit]
    losses = [item(k) for k in order if delta[k] < 0][:limit]
    return {"metric": metric, "base": base.label, "other": other.label, "n": int(delta.size),
            "wins": wins, "losses": losses, "n_wins": int((delta > 0).sum()),
            "n_losses": int((delta < 0).sum()), "ties": int((delta == 0).sum())}


QUESTION_COLUMNS = ["id", "docs", "question", "answers", "base", "compared", "delta"]


def question_rows(items: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Wins or losses as table rows (:data:`QUESTION_COLUMNS`)."""
    return [[it["id"], "" if it["docs"] is None else it["docs"], it["question"] or "",
             " | ".join(map(str, it["answers"] or [])),
             f"{it['base_score']:.3g}: {it['base_prediction'] or ''}",
             f"{it['other_score']:.3g}: {it['other_prediction'] or ''}",
             f"{it['delta']:+.3g}"] for it in items]


SIDE_BY_SIDE_CSS = (".mf-side{display:flex;gap:12px;align-items:flex-start}"
                    ".mf-side>div{flex:1;min-width:0}")


def record_view(run: RunResults, key: RecordKey) -> dict[str, Any] | None:
    """One record of a run as the trace viewer's header shows it: question, expected
    answers, prediction and scores."""
    where = run.index().get(tuple(key))
    if where is None:
        return None
    view = dict(run.records[where])
    for j, m in enumerate(run.metrics):
        if math.isfinite(run.scores[where, j]):
            view[m] = float(run.scores[where, j])
    return view


def traces_side_by_side(base_trace: Mapping[str, Any] | None,
                        other_trace: Mapping[str, Any] | None, base_label: str,
                        other_label: str, base_record: Mapping[str, Any] | None = None,
                        other_record: Mapping[str, Any] | None = None) -> str:
    """Two traces of the same question in two columns, drawn by the workbench's trace
    viewer (with each run's question, answers, prediction and scores above its trace)."""
    from app.trace_view import CSS, trace_html

    def column(trace: Mapping[str, Any] | None, label: str,
               record: Mapping[str, Any] | None) -> str:
        body = trace_html(dict(trace) if trace else None,
                          dict(record) if record else None, title=label)
        if not trace:  # the viewer's empty state has no title: name the run anyway
            body = f"<h4>{html.escape(label)}</h4>{body}"
        return f"<div>{body}</div>"

    return (f"<style>{CSS}{SIDE_BY_SIDE_CSS}</style><div class='mf-side'>"
            f"{column(base_trace, base_label, base_record)}"
            f"{column(other_trace, other_label, other_record)}</div>")


# ------------------------------------------------------------------------- figures
def final_metrics(run: RunResults) -> dict[str, float]:
    """Each metric's value over all questions (records' mean, else the summary's)."""
    out: dict[str, float] = {}
    for j, m in enumerate(run.metrics):
        if run.has_records:
            col = run.scores[:, j]
            col = col[np.isfinite(col)]
            if col.size:
                out[m] = float(col.mean())
        elif _is_number(run.summary.get(m)):
            out[m] = float(run.summary[m])
    return out


def parallel_figure(runs: Sequence[RunResults], color_metric: str | None = None,
                    max_settings: int = MAX_PARALLEL_SETTINGS) -> Figure:
    """Parallel coordinates: one line per run, over the settings that differ between the runs
    (numbers as numbers, anything else as labelled categories) and the final metrics; lines
    coloured by ``color_metric`` (default: the first metric)."""
    if len(runs) < 2:
        return empty_figure("Pick at least two runs to see parallel coordinates")
    diff = config_diff({r.label: r.config for r in runs}, differences_only=True)[:max_settings]
    finals = [final_metrics(r) for r in runs]
    metric_list = list(dict.fromkeys(m for f in finals for m in f))
    dims: list[dict[str, Any]] = []
    for row in diff:
        values = row["values"]
        if all(_is_number(v) and not isinstance(v, bool) for v in values):
            dims.append({"label": row["key"], "values": [float(v) for v in values]})
        else:
            names = list(dict.fromkeys(display_value(v) for v in values))
            codes = [names.index(display_value(v)) for v in values]
            dims.append({"label": row["key"], "values": codes, "tickvals": list(range(len(names))),
                         "ticktext": [n[:24] for n in names]})
    for m in metric_list:
        vals = [f.get(m, math.nan) for f in finals]
        dims.append({"label": m, "values": vals})
    if not dims:
        return empty_figure("The runs have neither differing settings nor metrics")
    color_metric = color_metric if color_metric in metric_list else (
        metric_list[0] if metric_list else None)
    line: dict[str, Any] = {"color": list(range(len(runs))), "colorscale": [
        [i / max(1, len(runs) - 1), run_color(i)] for i in range(len(runs))]}
    if color_metric is not None:
        line = {"color": [f.get(color_metric, math.nan) for f in finals],
                "colorscale": "Viridis", "showscale": True,
                "colorbar": {"title": {"text": color_metric}}}
    dims.insert(0, {"label": "run", "values": list(range(len(runs))),
                    "tickvals": list(range(len(runs))),
                    "ticktext": [r.label[:24] for r in runs]})
    fig = Figure({"type": "parcoords", "line": line, "dimensions": dims})
    fig.update_layout(height=420, template="plotly_white",
                      margin={"l": 120, "r": 60, "t": 60, "b": 30})
    return fig


def context_length_figure(runs: Sequence[RunResults], metric: str) -> Figure:
    """``metric`` against the number of documents, one line per run with its interval (runs
    evaluated at several context lengths)."""
    traces = []
    for pos, r in enumerate(runs):
        if metric not in r.metrics or not r.has_records:
            continue
        j = r.metrics.index(metric)
        values = sorted({d for d in r.docs if _is_number(d)})
        if len(values) < 2:
            continue
        xs, ys, lo, hi = [], [], [], []
        for d in values:
            col = r.scores[np.array([x == d for x in r.docs]), j]
            col = col[np.isfinite(col)]
            if not col.size:
                continue
            m, low, high = mean_ci(col)
            xs.append(d)
            ys.append(m)
            lo.append(m - low)
            hi.append(high - m)
        color = run_color(pos)
        traces.append({"type": "scatter", "x": xs, "y": ys, "name": r.label,
                       "mode": "lines+markers", "line": {"color": color},
                       "error_y": {"type": "data", "array": hi, "arrayminus": lo,
                                   "visible": True}})
    if not traces:
        return empty_figure("No run was evaluated at several context lengths")
    fig = Figure(data=traces)
    fig.update_layout(height=360, template="plotly_white", xaxis={"title": {"text": "documents"},
                                                                   "type": "log"},
                      yaxis={"title": {"text": metric}}, margin={"l": 50, "r": 20, "t": 30,
                                                                  "b": 40})
    return fig


# ------------------------------------------------------------------------ comparison
def build_comparison(runs: Sequence[RunResults], base: int | None = 0,
                     metrics: Sequence[str] | None = None, differences_only: bool = True,
                     confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                     seed: int = SEED, cluster: bool = False) -> dict[str, Any]:
    """Everything the Compare tab shows, as JSON-ready data: the runs, the evaluation table,
    the config diff and each part's build time in seconds (``timings``)."""
    if not runs:
        raise CompareError("pick at least one run to compare")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    table = evaluation_table(runs, base, metrics, confidence, n_resamples, seed, cluster)
    timings["table"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    diff = config_diff({r.label: r.config for r in runs}, differences_only)
    timings["config_diff"] = time.perf_counter() - t0
    return {
        "runs": [{"label": r.label, "run_id": r.run_id, "n": len(r.keys),
                  "episodes": len({k[0] if k[0] is not None else k[1] for k in r.keys}),
                  "metrics": r.metrics} for r in runs],
        "base": runs[base].label if base is not None else None,
        "confidence": confidence, "n_resamples": n_resamples, "seed": seed,
        "cluster": cluster,
        "table": table, "config_diff": diff, "timings": timings,
    }


def jsonable(value: Any) -> Any:
    """NaN becomes None and infinities the strings ``"inf"`` / ``"-inf"`` (strict JSON)."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value


def table_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The evaluation table as CSV (:data:`TABLE_COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in jsonable(dict(row)).items()})
    return buf.getvalue()


def comparison_json(comparison: Mapping[str, Any]) -> str:
    """The comparison as strict JSON."""
    return json.dumps(jsonable(comparison), indent=1, ensure_ascii=False, allow_nan=False)


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(comparison: Mapping[str, Any], figures: Mapping[str, Figure] | None = None,
                title: str = "MemFactory run comparison") -> str:
    """A standalone HTML report: the evaluation table, the config diff and the figures, with
    plotly.js inlined once (it opens offline)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title><style>body{{font-family:sans-serif;margin:24px}}"
        "table{border-collapse:collapse;font-size:13px;margin:8px 0 24px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        "th{background:#f0f0f0}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Base run: <b>{e(str(comparison.get('base') or 'none'))}</b>. Intervals: "
        f"{round(float(comparison.get('confidence', CONFIDENCE)) * 100)}% percentile "
        f"bootstrap, {comparison.get('n_resamples')} resamples, seed {comparison.get('seed')}"
        + (", whole episodes resampled" if comparison.get("cluster") else "")
        + "; differences are paired over the questions both runs answered; * marks a "
        "difference whose interval excludes 0.</p>",
        "<h2>Evaluation</h2>",
        _html_table(DISPLAY_COLUMNS, display_rows(comparison.get("table", []))),
        "<h2>Settings that differ</h2>",
    ]
    labels = [r["label"] for r in comparison.get("runs", [])]
    diff_rows = [[d["key"], *map(display_value, d["values"])]
                 for d in comparison.get("config_diff", [])]
    parts.append(_html_table(["setting", *labels], diff_rows) if diff_rows
                 else "<p>No setting differs.</p>")
    first = True
    for name, fig in (figures or {}).items():
        parts.append(f"<h2>{e(name)}</h2>")
        # figures built unvalidated (the Runs curves) keep their template as a name:
        # rebuilding one validated expands it, as to_html needs
        checked = Figure(fig.to_dict())
        parts.append(checked.to_html(full_html=False, include_plotlyjs=first))
        first = False
    parts.append("</body></html>")
    return "".join(parts)


# ------------------------------------------------------------------- stored runs
class RunSource(Protocol):
    """The part of ``jobs.store.RunStore`` the comparison reads."""

    def get_run(self, run_id: int) -> Any: ...

    def metric_names(self, run_id: int) -> list[str]: ...

    def metrics(self, run_ids: int | Sequence[int], names: Sequence[str] | None = None
                ) -> dict[int, dict[str, tuple[list[int], list[float]]]]: ...


def load_stored_runs(store: RunSource, run_ids: Sequence[int]) -> list[RunResults]:
    """The results of stored runs, in the order given (repeats dropped). Raises
    :class:`CompareError` naming a run that does not exist."""
    out: list[RunResults] = []
    seen: set[int] = set()
    for raw in run_ids:
        i = int(raw)
        if i in seen:
            continue
        seen.add(i)
        try:
            run = store.get_run(i)
        except MemFactoryError:
            raise CompareError(f"no run with id {i}") from None
        out.append(run_results(run, _stored_records(store)))
    return out


def _stored_records(store: RunSource) -> Callable[[int], list[dict[str, Any]]] | None:
    samples = getattr(store, "samples", None)
    if samples is None:
        return None
    return lambda run_id: [s.data for s in samples(run_id, kind="eval_record")]


def compare_stored_runs(store: RunSource, run_ids: Sequence[int], base_id: int | None = None,
                        metrics: Sequence[str] | None = None, differences_only: bool = True,
                        cluster: bool = False) -> tuple[list[RunResults], dict[str, Any]]:
    """Load stored runs and compare them against ``base_id`` (default: the first run; it must
    be one of ``run_ids``). Returns the loaded runs and :func:`build_comparison`'s result,
    whose ``timings`` include ``load``."""
    t0 = time.perf_counter()
    runs = load_stored_runs(store, run_ids)
    load_s = time.perf_counter() - t0
    if not runs:
        raise CompareError("pick at least one run to compare")
    ids = [r.run_id for r in runs]
    if base_id is None:
        base = 0
    elif int(base_id) in ids:
        base = ids.index(int(base_id))
    else:
        raise CompareError(f"the base run #{base_id} is not among the compared runs "
                           f"({', '.join(f'#{i}' for i in ids)})")
    comparison = build_comparison(runs, base, metrics, differences_only, cluster=cluster)
    comparison["timings"] = {"load": load_s, **comparison["timings"]}
    comparison["base_id"] = ids[base]
    return runs, comparison


def stored_curves(store: RunSource, runs: Sequence[RunResults], smoothing: float = 0.6
                  ) -> Figure:
    """The Runs page's training curves of the compared runs, overlaid (one colour per run)."""
    from app.charts import default_panels, run_curves_figure

    ids = [r.run_id for r in runs if r.run_id is not None]
    if not ids:
        return empty_figure("No stored run selected")
    present = {n for i in ids for n in store.metric_names(i)}
    names = default_panels(present)
    if not names:
        return empty_figure("No training curves: the compared runs are evaluations")
    labels = {r.run_id: r.label for r in runs if r.run_id is not None}
    return run_curves_figure(store.metrics(ids, names), labels,
                             smoothing=min(max(float(smoothing), 0.0), 0.99),
                             uirevision="compare-" + "-".join(map(str, ids)))


def comparison_figures(runs: Sequence[RunResults], metric: str | None = None,
                       store: RunSource | None = None, smoothing: float = 0.6
                       ) -> dict[str, Figure]:
    """The figures of a comparison by title (the HTML report's and the tab's)."""
    metric = metric or next((m for r in runs for m in r.metrics), None)
    figures = {"Parallel coordinates": parallel_figure(runs, metric)}
    if metric is not None and any(len({d for d in r.docs if d is not None}) > 1 for r in runs):
        figures["By context length"] = context_length_figure(runs, metric)
    if store is not None:
        curves = stored_curves(store, runs, smoothing)
        if curves.data:
            figures["Training curves"] = curves
    return figures
