"""The Runs tab: every run in the store, live curves of the selected ones, details, log tail,
cancel, and a form that submits a training or evaluation run.

All state lives in the run store: the page polls it with a ``gr.Timer``, so closing the
browser or restarting the workbench loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd
from plotly.graph_objects import Figure

from app.charts import (
    RUN_TABLE_HEADERS,
    default_panels,
    empty_figure,
    format_duration,
    format_time,
    run_curves_figure,
    run_duration,
    run_table_rows,
)
from app.services import (
    LOG_LINES,
    config_presets,
    log_tail,
    read_preset,
    submit_config_text,
    with_ingest,
)
from app.trace_view import trace_html, trace_viewer
from jobs.models import ACTIVE_STATUSES, FINAL_STATUSES, Run
from jobs.store import RunNotFound, RunStore
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from app.context import AppContext
    from jobs.scheduler import Scheduler

REFRESH_S = 2.0
"""Seconds between two polls of the store."""

RUN_LIST_LIMIT = 200
"""The newest runs the table and the run pickers show."""

CANCELLABLE = ("queued", *ACTIVE_STATUSES)

# Keep the log scrolled to its newest line, unless the reader scrolled up.
FOLLOW_LOG_JS = """() => setTimeout(() => {
  const t = document.querySelector('#runs-log textarea');
  if (!t) return;
  if (!t.dataset.follow) {
    t.dataset.follow = '1';
    t.addEventListener('scroll', () => {
      t.dataset.follow = t.scrollHeight - t.scrollTop - t.clientHeight < 40 ? '1' : '0';
    });
  }
  if (t.dataset.follow === '1') t.scrollTop = t.scrollHeight;
}, 50)"""


# ------------------------------------------------------------------------- helpers
def run_label(run: Run) -> str:
    """How a run appears in the pickers: ``#12 train_synthetic_tiny (running)``."""
    return f"#{run.id} {run.name or run.kind} ({run.status})"


def run_choices(runs: Sequence[Run]) -> list[tuple[str, int]]:
    """Dropdown choices ``(label, run id)``, newest first."""
    return [(run_label(r), r.id) for r in runs]


def selected_ids(run_id: int | float | str | None,
                 compare: Sequence[int | float | str] | None) -> list[int]:
    """The primary run then the compared ones, without repeats."""
    ids: list[int] = []
    for value in [run_id, *(compare or [])]:
        if value is None or value == "":
            continue
        i = int(value)
        if i not in ids:
            ids.append(i)
    return ids


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _fence(text: str) -> str:
    return "```\n" + text.replace("```", "'''").rstrip() + "\n```"


def run_details_markdown(run: Run, last_metrics: Mapping[str, float] | None = None,
                         last_step: int | None = None, now: float | None = None) -> str:
    """The details panel of a run: identity, timings, progress, latest metrics, error and
    summary, as Markdown."""
    last_metrics = last_metrics or {}
    title = f"### Run {run.id}" + (f" · {run.name}" if run.name else "")
    facts = [f"**status** {run.status}", f"**kind** {run.kind}"]
    facts += [f"**model** `{run.model}`"] if run.model else []
    facts += [f"**pipeline** {run.pipeline}"] if run.pipeline else []
    lines = [title, " · ".join(facts)]
    times = [f"created {format_time(run.created_at)}"]
    if run.started_at:
        times.append(f"started {format_time(run.started_at)}")
    if run.finished_at:
        times.append(f"finished {format_time(run.finished_at)}")
    duration = format_duration(run_duration(run, now))
    if duration:
        times.append(f"duration {duration}")
    lines.append(" · ".join(times))
    if run.status == "queued":
        lines.append("Waiting for a worker to start it.")
    if run.cancel_requested_at and run.status not in FINAL_STATUSES:
        lines.append(f"Cancel requested at {format_time(run.cancel_requested_at)}: it stops "
                     "at its next step.")
    progress = []
    max_steps = (run.config or {}).get("max_steps") if run.kind == "train" else None
    if last_step is not None:
        progress.append(f"step {last_step}" + (f" / {max_steps}" if max_steps else ""))
    for key in ("reward", "kl", "completion_length", "loss"):
        if key in last_metrics:
            progress.append(f"{key} {_number(last_metrics[key])}")
    if progress:
        lines.append("**latest** " + " · ".join(progress))
    if run.error:
        lines.append("**error**\n\n" + _fence(run.error))
    if run.summary:
        scalars = {k: v for k, v in run.summary.items()
                   if isinstance(v, int | float | str | bool) or v is None}
        nested = {k: v for k, v in run.summary.items() if k not in scalars}
        if scalars:
            lines.append("**summary** " + " · ".join(f"{k} {_number(v)}"
                                                     for k, v in scalars.items()))
        if nested:
            lines.append(_fence(json.dumps(nested, indent=1, default=str)[:4000]))
    if run.output_dir:
        lines.append(f"output: `{run.output_dir}`")
    return "\n\n".join(lines)


def curves(store: RunStore, run_ids: Sequence[int], smoothing: float,
           runs: Mapping[int, Run] | None = None) -> tuple[Figure, dict[int, dict[str, Any]]]:
    """The curves figure of some runs, and the metrics it plots (``RunStore.metrics``
    output, plus ``loss``)."""
    if not run_ids:
        return empty_figure("Select a run to see its curves"), {}
    # only the plotted metrics (and the loss the details show): a trainer logs ~25 per step
    present = {name for i in run_ids for name in store.metric_names(i)}
    names = [*default_panels(present), *(["loss"] if "loss" in present else [])]
    data = store.metrics(list(run_ids), names) if names else {i: {} for i in run_ids}
    runs = runs or {}
    labels = {i: (f"#{i} {runs[i].name}" if i in runs and runs[i].name else f"run {i}")
              for i in run_ids}
    fig = run_curves_figure(data, labels, smoothing=min(max(float(smoothing), 0.0), 0.99),
                            uirevision="-".join(map(str, run_ids)))
    if not fig.data:
        kinds = {runs[i].kind for i in run_ids if i in runs}
        message = ("Evaluation runs have no curves: their scores are in the details"
                   if kinds == {"eval"} else "No training metrics yet")
        fig = empty_figure(message)
    return fig, data


def _table(rows: list[list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=RUN_TABLE_HEADERS)


RECORD_LIMIT = 1000
"""Evaluation records a run's record picker lists."""


def record_choices(store: RunStore, run_id: int | None) -> list[tuple[str, int]]:
    """The evaluation records of a run as picker choices ``(label, index)``."""
    if run_id is None:
        return []
    try:
        samples = store.samples(int(run_id), kind="eval_record", limit=RECORD_LIMIT)
    except (MemFactoryError, ValueError, OverflowError):
        return []
    out = []
    for i, sample in enumerate(samples):
        data = sample.data or {}
        question = str(data.get("question", ""))
        short = question if len(question) <= 70 else question[:67] + "..."
        score = data.get("em")
        mark = f" · em {float(score):.2f}" if isinstance(score, int | float) else ""
        out.append((f"{i + 1}. {short}{mark}", i))
    return out


def eval_record(store: RunStore, run_id: int | None, index: int | None) -> dict[str, Any] | None:
    """Evaluation record number ``index`` of a run (None when there is none)."""
    if run_id is None or index is None:
        return None
    samples = store.samples(int(run_id), kind="eval_record", limit=RECORD_LIMIT)
    i = int(index)
    if not 0 <= i < len(samples):
        return None
    try:
        output_dir = store.get_run(int(run_id)).output_dir
    except RunNotFound:
        output_dir = None
    return with_ingest(dict(samples[i].data or {}), output_dir)


def scheduler_note(scheduler: Scheduler | None) -> str:
    """One line saying who executes queued runs."""
    if scheduler is None:
        return ("No scheduler runs inside this workbench: queued runs wait for "
                "`memfactory worker`.")
    return f"Runs execute in this workbench's scheduler, {scheduler.max_concurrent} at a time."


# ---------------------------------------------------------------------------- the tab
def create_runs_tab(demo: gr.Blocks, store: RunStore, scheduler: Scheduler | None = None,
                    refresh_s: float = REFRESH_S) -> dict[str, gr.components.Component]:
    """Build the Runs tab's components inside the current ``gr.Tab`` and wire them; returns
    them by name."""
    default_preset = ("train_synthetic_tiny.yaml"
                      if "train_synthetic_tiny.yaml" in config_presets("train")
                      else next(iter(config_presets("train")), None))

    gr.Markdown(scheduler_note(scheduler), elem_id="runs-scheduler-note")
    table = gr.Dataframe(
        value=_table([]), headers=RUN_TABLE_HEADERS, interactive=False, max_height=320,
        datatype=["number", *["str"] * (len(RUN_TABLE_HEADERS) - 1)], label="Runs",
        elem_id="runs-table",
    )
    with gr.Row():
        run_dd = gr.Dropdown(label="Run", choices=[], value=None, scale=3,
                             elem_id="runs-select")
        compare_dd = gr.Dropdown(label="Compare with", choices=[], value=[], multiselect=True,
                                 scale=3, elem_id="runs-compare")
        smoothing = gr.Slider(0.0, 0.99, value=0.6, step=0.01, label="EMA smoothing", scale=2,
                              elem_id="runs-smoothing")
        with gr.Column(scale=1, min_width=120):
            cancel_btn = gr.Button("Cancel run", variant="stop", interactive=False, size="md",
                                   elem_id="runs-cancel")
    plot = gr.Plot(value=empty_figure("Select a run to see its curves"), label="Curves",
                   elem_id="runs-plot")
    with gr.Row():
        details = gr.Markdown("", elem_id="runs-details")
        log = gr.Textbox(label=f"Log (last {LOG_LINES} lines)", lines=14, max_lines=14,
                         interactive=False, autoscroll=True, elem_id="runs-log")
    with gr.Accordion("Evaluation records", open=False, elem_id="runs-records-box"):
        record_dd = gr.Dropdown(label="Record (question)", choices=[], value=None,
                                elem_id="runs-record")
        record_trace = trace_viewer(elem_id="runs-trace")
    with gr.Accordion("Submit a run", open=True):
        with gr.Row():
            kind = gr.Radio(["train", "eval"], value="train", label="Kind", scale=1,
                            elem_id="submit-kind")
            preset = gr.Dropdown(config_presets("train"), value=default_preset,
                                 label="Config (assets/configs)", scale=2,
                                 elem_id="submit-preset")
            name = gr.Textbox(label="Name (default: the config's)", scale=2,
                              elem_id="submit-name")
        config_box = gr.Code(read_preset(default_preset), language="yaml", interactive=True,
                             lines=12, max_lines=30, label="Config (YAML, editable)",
                             elem_id="submit-config")
        submit_btn = gr.Button("Submit run", variant="primary", elem_id="submit-button")
        submit_msg = gr.Markdown("", elem_id="submit-message")
    seen = gr.State({})
    timer = gr.Timer(refresh_s)

    def render(ids: list[int], smoothing_value: float,
               runs: Mapping[int, Run]) -> tuple[Figure, str, str, dict[str, Any]]:
        fig, data = curves(store, ids, smoothing_value, runs)
        if not ids:
            return fig, "", "", gr.update(interactive=False)
        primary = runs.get(ids[0])
        if primary is None:
            return fig, f"Run {ids[0]} no longer exists.", "", gr.update(interactive=False)
        series = data.get(primary.id, {})
        last = {k: v[-1] for k, (_, v) in series.items() if v}
        steps = [s[-1] for s, _ in series.values() if s]
        details_md = run_details_markdown(primary, last, max(steps) if steps else None)
        return (fig, details_md, log_tail(primary.log_path),
                gr.update(interactive=primary.status in CANCELLABLE))

    def fetch(ids: Sequence[int], listed: Sequence[Run] = ()) -> dict[int, Run]:
        found = {r.id: r for r in listed if r.id in ids}
        for i in ids:
            if i not in found:
                with contextlib.suppress(RunNotFound):
                    found[i] = store.get_run(i)
        return found

    def on_select(run_id: int | None, compare: list[int] | None, smoothing_value: float,
                  state: dict[str, Any]) -> tuple[Any, ...]:
        ids = selected_ids(run_id, compare)
        runs = fetch(ids)
        fig, details_md, log_text, cancel = render(ids, smoothing_value, runs)
        state = {**(state or {}), "statuses": {i: r.status for i, r in runs.items()},
                 "selection": [ids, smoothing_value]}
        return fig, details_md, log_text, cancel, state

    def refresh(run_id: int | None, compare: list[int] | None, smoothing_value: float,
                state: dict[str, Any], pick: bool = False) -> tuple[Any, ...]:
        state = dict(state or {})
        listed = store.list_runs(limit=RUN_LIST_LIMIT)
        best = store.best_metric([r.id for r in listed]) if listed else {}
        rows = run_table_rows(listed, best)
        table_out = gr.skip() if rows == state.get("rows") else _table(rows)
        if pick and run_id is None and listed:
            running = [r for r in listed if r.status in ACTIVE_STATUSES]
            run_id = (running or listed)[0].id
        ids = selected_ids(run_id, compare)
        runs = fetch(ids, listed)
        listed_ids = {r.id for r in listed}
        # selected runs older than the list stay pickable; deleted ones are unselected
        choices = run_choices(listed) + run_choices(
            [r for i, r in runs.items() if i not in listed_ids])
        gone = [i for i in ids if i not in runs]
        ids = [i for i in ids if i in runs]
        choices_changed = choices != state.get("choices")
        run_value: dict[str, Any] = {}
        if pick and run_id is not None:
            run_value = {"value": run_id}
        elif run_id is not None and int(run_id) in gone:
            run_value = {"value": None}
        run_out: Any = (gr.update(choices=choices, **run_value)
                        if choices_changed or run_value else gr.skip())
        compare_kept = [i for i in selected_ids(None, compare) if i not in gone]
        compare_value = ({"value": compare_kept}
                         if len(compare_kept) != len(compare or []) else {})
        compare_out = (gr.update(choices=choices, **compare_value)
                       if choices_changed or compare_value else gr.skip())
        state.update(rows=rows, choices=choices)
        statuses = {i: r.status for i, r in runs.items()}
        changed = (statuses != state.get("statuses")
                   or [ids, smoothing_value] != state.get("selection"))
        active = any(s in ACTIVE_STATUSES for s in statuses.values())
        if (ids and (changed or active)) or (gone and not ids):
            fig, details_md, log_text, cancel = render(ids, smoothing_value, runs)
            state.update(statuses=statuses, selection=[ids, smoothing_value])
            return (table_out, run_out, compare_out, fig, details_md, log_text, cancel, state)
        skip = gr.skip()
        return table_out, run_out, compare_out, skip, skip, skip, skip, state

    def on_load(run_id: int | None, compare: list[int] | None, smoothing_value: float,
                state: dict[str, Any]) -> tuple[Any, ...]:
        return refresh(run_id, compare, smoothing_value, state, pick=True)

    def on_row(evt: gr.SelectData) -> Any:
        row = evt.row_value or []
        try:
            return int(row[0])
        except (IndexError, TypeError, ValueError):
            return gr.skip()

    def on_cancel(run_id: int | None) -> None:
        if run_id is None:
            gr.Warning("Select a run first.")
            return
        try:
            status = store.request_cancel(int(run_id))
        except RunNotFound as err:
            gr.Warning(str(err))
            return
        if status == "cancelled":
            gr.Info(f"Run {run_id} cancelled.")
        elif status in ACTIVE_STATUSES:
            gr.Info(f"Run {run_id} stops at its next step.")
        else:
            gr.Info(f"Run {run_id} is already {status}.")

    def on_kind(kind_value: str) -> tuple[Any, str]:
        names = config_presets(kind_value)
        first = next((n for n in names if "tiny" in n), names[0] if names else None)
        return gr.update(choices=names, value=first), read_preset(first)

    def on_submit(kind_value: str, preset_name: str | None, text: str,
                  run_name: str | None) -> tuple[str, Any]:
        name_value = (run_name or "").strip() or (Path(preset_name).stem if preset_name
                                                  else None)
        try:
            run = submit_config_text(store, kind_value, text or "", name_value)
        except MemFactoryError as err:
            return f"**Not submitted.**\n\n{_fence(str(err))}", gr.skip()
        choices = run_choices(store.list_runs(limit=RUN_LIST_LIMIT))
        return (f"Queued {run.kind} run **#{run.id}**" + (f" ({run.name})" if run.name else "")
                + f": it writes to `{run.output_dir}`.",
                gr.update(choices=choices, value=run.id))

    def on_run_records(run_id: int | None) -> tuple[Any, str]:
        choices = record_choices(store, run_id)
        return (gr.update(choices=choices, value=choices[0][1] if choices else None),
                trace_html(None))

    def on_record(run_id: int | None, index: int | None) -> str:
        record = eval_record(store, run_id, index)
        if record is None:
            return trace_html(None)
        return trace_html(record.get("trace"), record, title=f"Run {run_id}, record {index}")

    selection_inputs = [run_dd, compare_dd, smoothing, seen]
    selection_outputs = [plot, details, log, cancel_btn, seen]
    refresh_outputs = [table, run_dd, compare_dd, plot, details, log, cancel_btn, seen]
    # UI plumbing, not part of the API (ui.py exposes named endpoints for clients).
    quiet: dict[str, Any] = {"show_progress": "hidden", "queue": False,
                             "api_visibility": "private"}
    run_dd.change(on_select, selection_inputs, selection_outputs, **quiet)
    compare_dd.change(on_select, selection_inputs, selection_outputs, **quiet)
    smoothing.change(on_select, selection_inputs, selection_outputs, trigger_mode="always_last",
                     **quiet)
    table.select(on_row, None, run_dd, **quiet)
    timer.tick(refresh, selection_inputs, refresh_outputs, **quiet)
    demo.load(on_load, selection_inputs, refresh_outputs, **quiet)
    cancel_btn.click(on_cancel, run_dd, None, **quiet).then(
        refresh, selection_inputs, refresh_outputs, **quiet)
    log.change(None, None, None, js=FOLLOW_LOG_JS, **quiet)
    run_dd.change(on_run_records, run_dd, [record_dd, record_trace], **quiet)
    record_dd.change(on_record, [run_dd, record_dd], record_trace, **quiet)
    record_dd.focus(lambda run_id: gr.update(choices=record_choices(store, run_id)), run_dd,
                    record_dd, **quiet)
    kind.input(on_kind, kind, [preset, config_box], **quiet)
    preset.input(read_preset, preset, config_box, **quiet)
    submit_btn.click(on_submit, [kind, preset, config_box, name], [submit_msg, run_dd],
                     api_visibility="private")
    return {"table": table, "run": run_dd, "compare": compare_dd, "smoothing": smoothing,
            "cancel": cancel_btn, "plot": plot, "details": details, "log": log, "kind": kind,
            "preset": preset, "name": name, "config": config_box, "submit": submit_btn,
            "submit_message": submit_msg, "timer": timer, "state": seen, "record": record_dd,
            "trace": record_trace}


# ------------------------------------------------------------------ registration
def register(ctx: AppContext) -> None:
    """The Runs tab: its components, its poller (on only while the tab is visible) and the
    run endpoints."""
    from app.tabs.runs_api import register_api

    assert ctx.demo is not None
    parts = create_runs_tab(ctx.demo, ctx.store, ctx.scheduler, refresh_s=ctx.refresh_s)
    ctx.shared["runs"] = parts
    ctx.poller("runs", parts["timer"])
    register_api(ctx)
