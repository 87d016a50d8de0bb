"""The Compare tab: pick runs (by kind, status, pipeline, tag), edit their tags and notes, and
see how they differ: the evaluation table against a base run with paired intervals, the
settings that differ, parallel coordinates, overlaid curves, the questions a run wins and
loses with both traces, and exports (CSV, JSON, standalone HTML report).

Callbacks are thin: :mod:`app.compare` builds every table and figure.
"""

from __future__ import annotations

import html
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from app import compare
from app.charts import empty_figure
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import memfactory_home

if TYPE_CHECKING:
    from app.context import AppContext

RUN_LIST_LIMIT = 500
"""The newest runs the pickers offer."""
REFRESH_S = 2.0
"""Seconds between two reads of the run list while the tab is visible."""
DIFF_HEADERS = ["setting"]
QUIET: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}


# ------------------------------------------------------------------------ helpers
def run_choices(runs: Sequence[Any]) -> list[tuple[str, int]]:
    """Picker choices ``(label, id)``: ``#12 name (eval, succeeded)``."""
    return [(f"{compare.run_label(r)} ({r.kind}, {r.status})", r.id) for r in runs]


def _ints(values: Sequence[Any] | None) -> list[int]:
    out: list[int] = []
    for v in values or []:
        if v is not None and v != "" and int(v) not in out:
            out.append(int(v))
    return out


def export_dir() -> Path:
    """Where exported files are written before the browser downloads them."""
    path = memfactory_home() / "exports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def table_frame(rows: list[list[Any]], headers: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=headers)


def diff_frame(comparison: dict[str, Any]) -> pd.DataFrame:
    labels = [r["label"] for r in comparison["runs"]]
    rows = [[d["key"], *map(compare.display_value, d["values"])]
            for d in comparison["config_diff"]]
    return table_frame(rows, ["setting", *labels])


def summary_markdown(comparison: dict[str, Any]) -> str:
    runs = comparison["runs"]
    parts = [f"**{len(runs)} run(s)**, base **{comparison.get('base') or 'none'}**."]
    parts.append(" · ".join(f"{r['label']}: {r['n']} records" if r["n"] else
                            f"{r['label']}: summary only" for r in runs))
    parts.append("Intervals: 95% percentile bootstrap (2,000 resamples"
                 + (", whole episodes resampled" if comparison.get("cluster") else "")
                 + "); differences paired over the questions both runs answered; `*` marks a "
                 "difference whose interval excludes 0.")
    grouped = [r for r in runs if r["n"] and r["episodes"] < r["n"]]
    if grouped and not comparison.get("cluster"):
        parts.append("Questions come in episodes here (" + ", ".join(
            f"{r['label']}: {r['n']} in {r['episodes']}" for r in grouped) + "): questions "
            "about one conversation are not independent, so *Resample whole episodes* gives "
            "the honest, wider intervals.")
    t = comparison["timings"]
    parts.append(f"<small>built in {sum(t.values()) * 1000:.0f} ms</small>")
    return "\n\n".join(parts)


def _optional(figure: Any) -> Any:
    """A figure shown only when there is one (training curves, context-length sweep)."""
    if figure is None:
        return gr.update(visible=False)
    return gr.update(value=figure, visible=True)


# ------------------------------------------------------------------------ the tab
def create_compare_tab(store: RunStore, refresh_s: float = REFRESH_S) -> dict[str, Any]:
    """Build the tab's components inside the current ``gr.Tab`` and wire them; returns them
    by name (``timer`` polls the run list every ``refresh_s`` seconds)."""
    with gr.Row():
        kind_f = gr.Dropdown(["eval", "train"], value=[], multiselect=True, label="Kind",
                             scale=1, elem_id="compare-kind")
        status_f = gr.Dropdown([], value=[], multiselect=True, label="Status", scale=1,
                               elem_id="compare-status")
        pipeline_f = gr.Dropdown([], value=[], multiselect=True, label="Pipeline", scale=1,
                                 elem_id="compare-pipeline")
        tag_f = gr.Dropdown([], value=[], multiselect=True, label="Tag", scale=1,
                            elem_id="compare-tag")
    with gr.Row():
        runs_dd = gr.Dropdown([], value=[], multiselect=True, label="Runs to compare",
                              scale=4, elem_id="compare-runs")
        base_dd = gr.Dropdown([], value=None, label="Base run", scale=2,
                              elem_id="compare-base")
        with gr.Column(scale=1, min_width=160):
            diff_only = gr.Checkbox(True, label="Differences only", elem_id="compare-diff-only")
            cluster = gr.Checkbox(False, label="Resample whole episodes",
                                  elem_id="compare-cluster")
    summary = gr.Markdown("Pick runs to compare.", elem_id="compare-summary")
    table = gr.Dataframe(table_frame([], compare.DISPLAY_COLUMNS), interactive=False,
                         label="Evaluation", max_height=420, wrap=True,
                         elem_id="compare-table")
    diff = gr.Dataframe(table_frame([], DIFF_HEADERS), interactive=False,
                        label="Settings", max_height=360, wrap=True, elem_id="compare-diff")
    with gr.Row():
        metric_dd = gr.Dropdown([], value=None, label="Metric (colour, per question)",
                                scale=2, elem_id="compare-metric")
        smoothing = gr.Slider(0.0, 0.99, value=0.6, step=0.01, label="EMA smoothing",
                              scale=2, elem_id="compare-smoothing")
    parallel = gr.Plot(empty_figure("Pick at least two runs"), label="Parallel coordinates",
                       elem_id="compare-parallel")
    with gr.Row():
        curves = gr.Plot(empty_figure("No training curves"), label="Training curves",
                         visible=False, elem_id="compare-curves")
        lengths = gr.Plot(empty_figure("No context-length sweep"), label="By context length",
                          visible=False, elem_id="compare-lengths")
    with gr.Accordion("Per question", open=True):
        with gr.Row():
            other_dd = gr.Dropdown([], value=None, label="Compared run", scale=2,
                                   elem_id="compare-other")
        q_summary = gr.Markdown("", elem_id="compare-questions-summary")
        with gr.Row():
            wins = gr.Dataframe(table_frame([], compare.QUESTION_COLUMNS), interactive=False,
                                label="Wins (compared run better)", max_height=300, wrap=True,
                                elem_id="compare-wins")
            losses = gr.Dataframe(table_frame([], compare.QUESTION_COLUMNS),
                                  interactive=False, label="Losses (base better)",
                                  max_height=300, wrap=True, elem_id="compare-losses")
        traces = gr.HTML("", elem_id="compare-traces")
    with gr.Accordion("Tags and notes", open=False):
        with gr.Row():
            note_run = gr.Dropdown([], value=None, label="Run", scale=2,
                                   elem_id="compare-note-run")
            tags_box = gr.Textbox(label="Tags (commas or spaces)", scale=3,
                                  elem_id="compare-tags")
        notes_box = gr.Textbox(label="Notes", lines=3, elem_id="compare-notes")
        with gr.Row():
            save_btn = gr.Button("Save tags and notes", elem_id="compare-save-notes")
            note_msg = gr.Markdown("", elem_id="compare-note-message")
    with gr.Row():
        csv_btn = gr.Button("Export CSV", elem_id="compare-export-csv")
        json_btn = gr.Button("Export JSON", elem_id="compare-export-json")
        html_btn = gr.Button("HTML report", elem_id="compare-export-html")
    export_file = gr.File(label="Export", interactive=False, elem_id="compare-export")
    questions_state = gr.State({})
    seen = gr.State({})
    timer = gr.Timer(refresh_s)

    # --------------------------------------------------------------- callbacks
    def list_choices(kinds: list[str], statuses: list[str], pipelines: list[str],
                     tags: list[str], selected: list[int], state: dict[str, Any]
                     ) -> tuple[Any, ...]:
        state = dict(state or {})
        listed = store.list_runs(limit=RUN_LIST_LIMIT)
        options = compare.filter_options(listed)
        picked = compare.pick_runs(listed, kinds, statuses, pipelines, tags)
        ids = _ints(selected)
        kept = [r for r in listed if r.id in ids and r not in picked]
        choices = run_choices(picked + kept)
        key = [choices, options]
        if key == state.get("choices"):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        state["choices"] = key

        def opts(name: str, chosen: list[str]) -> Any:
            return gr.update(choices=sorted({*options[name], *(chosen or [])}))

        return (gr.update(choices=choices), opts("status", statuses),
                opts("pipeline", pipelines), opts("tag", tags), state)

    def pickers(ids: list[int], base: int | None, other: int | None,
                note_id: int | None) -> tuple[list[Any], int | None, int | None]:
        """The base, compared-run and notes pickers for the selected runs (a value kept when
        it is still selected); returns their updates, the base and the compared run."""
        listed = {r.id: r for r in store.list_runs(limit=RUN_LIST_LIMIT)}
        labels = [(compare.run_label(listed[i]) if i in listed else f"#{i}", i) for i in ids]
        base_v = int(base) if base is not None and int(base) in ids else (ids[0] if ids
                                                                              else None)
        others = [c for c in labels if c[1] != base_v]
        other_v = int(other) if other is not None and int(other) in [c[1] for c in others] \
            else (others[0][1] if others else None)
        note_v = int(note_id) if note_id is not None and int(note_id) in ids else (
            ids[0] if ids else None)
        return ([gr.update(choices=labels, value=base_v),
                 gr.update(choices=others, value=other_v),
                 gr.update(choices=labels, value=note_v)], base_v, other_v)

    def build(ids: list[int], base: int | None, differences_only: bool,
              by_episode: bool, metric: str | None, smoothing_value: float
              ) -> tuple[tuple[Any, ...], str | None]:
        """The comparison's outputs, and the metric picked."""
        if not ids:
            empty = empty_figure("Pick runs to compare")
            return ("Pick runs to compare.", table_frame([], compare.DISPLAY_COLUMNS),
                    table_frame([], DIFF_HEADERS), empty, _optional(None), _optional(None),
                    gr.update(choices=[], value=None)), None
        try:
            runs, comparison = compare.compare_stored_runs(
                store, ids, base if base is not None and int(base) in ids else None,
                None, bool(differences_only), bool(by_episode))
        except MemFactoryError as err:
            empty = empty_figure("No comparison")
            return (f"**Cannot compare.** {err}", table_frame([], compare.DISPLAY_COLUMNS),
                    table_frame([], DIFF_HEADERS), empty, _optional(None), _optional(None),
                    gr.skip()), metric
        metrics = list(dict.fromkeys(m for r in runs for m in r.metrics))
        metric_v = metric if metric in metrics else compare.default_metric(runs)
        t0 = time.perf_counter()
        figures = compare.comparison_figures(runs, metric_v, store, smoothing_value)
        comparison["timings"]["figures"] = time.perf_counter() - t0
        return (summary_markdown(comparison),
                table_frame(compare.display_rows(comparison["table"]),
                            compare.DISPLAY_COLUMNS),
                diff_frame(comparison), figures["Parallel coordinates"],
                _optional(figures.get("Training curves")),
                _optional(figures.get("By context length")),
                gr.update(choices=metrics, value=metric_v)), metric_v

    def questions(base: int | None, other: int | None, metric: str | None
                  ) -> tuple[Any, ...]:
        empty = table_frame([], compare.QUESTION_COLUMNS)
        if base is None or other is None or not metric:
            return "Pick a base run, a compared run and a metric.", empty, empty, {}, ""
        try:
            runs = compare.load_stored_runs(store, [int(base), int(other)])
            if len(runs) < 2:
                raise compare.CompareError("pick a compared run other than the base")
            view = compare.question_diffs(runs[0], runs[1], metric)
        except MemFactoryError as err:
            return f"**Cannot compare questions.** {err}", empty, empty, {}, ""
        text = (f"On {view['n']} shared questions ({metric}): **{view['n_wins']} wins**, "
                f"**{view['n_losses']} losses**, {view['ties']} ties. Click a row to see "
                "both traces.")
        state = {"base": [runs[0].path, runs[0].label], "other": [runs[1].path, runs[1].label],
                 "wins": [it["key"] for it in view["wins"]],
                 "losses": [it["key"] for it in view["losses"]]}
        return (text, table_frame(compare.question_rows(view["wins"]),
                                  compare.QUESTION_COLUMNS),
                table_frame(compare.question_rows(view["losses"]), compare.QUESTION_COLUMNS),
                state, "")

    def update(selected: list[int], base: int | None, other: int | None,
               note_id: int | None, differences_only: bool, by_episode: bool,
               metric: str | None, smoothing_value: float) -> tuple[Any, ...]:
        """Everything the selection drives, in one event: the pickers, the comparison and
        the per-question view always agree."""
        ids = _ints(selected)
        picker_updates, base_v, other_v = pickers(ids, base, other, note_id)
        built, metric_v = build(ids, base_v, differences_only, by_episode, metric,
                                smoothing_value)
        return (*picker_updates, *built, *questions(base_v, other_v, metric_v))

    def show_traces(which: str, state: dict[str, Any], evt: gr.SelectData) -> str:
        keys = (state or {}).get(which) or []
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        if not isinstance(row, int) or not 0 <= row < len(keys):
            return ""
        key = tuple(keys[row])
        (base_path, base_label), (other_path, other_label) = state["base"], state["other"]
        if not base_path or not other_path:
            return "<p>These runs have no results file with traces.</p>"
        try:
            base_trace = compare.load_traces(base_path).get(key)
            other_trace = compare.load_traces(other_path).get(key)
            base_run = compare.load_results(base_path)
            other_run = compare.load_results(other_path)
        except MemFactoryError as err:
            return f"<p>{html.escape(str(err))}</p>"
        return compare.traces_side_by_side(
            base_trace, other_trace, base_label, other_label,
            compare.record_view(base_run, key), compare.record_view(other_run, key))

    def load_notes(run_id: int | None) -> tuple[str, str]:
        if run_id is None:
            return "", ""
        try:
            run = store.get_run(int(run_id))
        except MemFactoryError:
            return "", ""
        return ", ".join(map(str, run.tags or [])), run.notes or ""

    def save_notes(run_id: int | None, tags: str, notes: str) -> str:
        if run_id is None:
            return "Pick a run first."
        try:
            store.update_run(int(run_id), tags=compare.parse_tags(tags),
                             notes=compare.check_notes(notes))
        except MemFactoryError as err:
            return f"**Not saved.** {err}"
        return f"Saved tags and notes of run #{int(run_id)}."

    def export(fmt: str, selected: list[int], base: int | None, by_episode: bool) -> Any:
        ids = _ints(selected)
        if not ids:
            gr.Warning("Pick runs to compare first.")
            return None
        try:
            runs, comparison = compare.compare_stored_runs(
                store, ids, base if base is not None and int(base) in ids else None,
                cluster=bool(by_episode))
        except MemFactoryError as err:
            gr.Warning(str(err))
            return None
        if fmt == "csv":
            text = compare.table_csv(comparison["table"])
        elif fmt == "json":
            text = compare.comparison_json(comparison)
        else:
            text = compare.report_html(comparison, compare.comparison_figures(runs,
                                                                              store=store))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", delete=False,
                                         dir=export_dir(), prefix=f"comparison-{stamp}-",
                                         suffix=f".{fmt}") as f:
            f.write(text)
        return f.name

    # ------------------------------------------------------------------ wiring
    filters = [kind_f, status_f, pipeline_f, tag_f, runs_dd, seen]
    list_outputs = [runs_dd, status_f, pipeline_f, tag_f, seen]
    for f in (kind_f, status_f, pipeline_f, tag_f):
        f.input(list_choices, filters, list_outputs, **QUIET)
    timer.tick(list_choices, filters, list_outputs, **QUIET)
    # One listener for every control: a page runs one of its events at a time and then the
    # latest pending one, so a slow build never overwrites a newer one (a callback's own
    # updates fire .change, not .input).
    gr.on([runs_dd.change, base_dd.input, other_dd.input, metric_dd.input, diff_only.input,
           cluster.input, smoothing.release], update,
          [runs_dd, base_dd, other_dd, note_run, diff_only, cluster, metric_dd, smoothing],
          [base_dd, other_dd, note_run, summary, table, diff, parallel, curves, lengths,
           metric_dd, q_summary, wins, losses, questions_state, traces],
          trigger_mode="always_last", **QUIET)

    def on_win(state: dict[str, Any], evt: gr.SelectData) -> str:
        return show_traces("wins", state, evt)

    def on_loss(state: dict[str, Any], evt: gr.SelectData) -> str:
        return show_traces("losses", state, evt)

    wins.select(on_win, questions_state, traces, **QUIET)
    losses.select(on_loss, questions_state, traces, **QUIET)
    note_run.change(load_notes, note_run, [tags_box, notes_box], **QUIET)
    save_btn.click(save_notes, [note_run, tags_box, notes_box], note_msg, **QUIET).then(
        list_choices, filters, list_outputs, **QUIET)
    for btn, fmt in ((csv_btn, "csv"), (json_btn, "json"), (html_btn, "html")):
        btn.click(lambda s, b, c, fmt=fmt: export(fmt, s, b, c), [runs_dd, base_dd, cluster],
                  export_file, **QUIET)
    return {"kind": kind_f, "status": status_f, "pipeline": pipeline_f, "tag": tag_f,
            "runs": runs_dd, "base": base_dd, "diff_only": diff_only, "cluster": cluster,
            "summary": summary,
            "table": table, "diff": diff, "metric": metric_dd, "parallel": parallel,
            "curves": curves, "lengths": lengths, "other": other_dd, "wins": wins,
            "losses": losses, "traces": traces, "note_run": note_run, "tags": tags_box,
            "notes": notes_box, "save_notes": save_btn, "export": export_file,
            "timer": timer, "state": seen, "list_choices": list_choices,
            "list_outputs": list_outputs, "filters": filters}


def register(ctx: AppContext) -> None:
    """The Compare tab: its components, its run-list poller (on only while the tab is
    visible) and the comparison endpoints."""
    from app.tabs.compare_api import register_api

    parts = create_compare_tab(ctx.store, ctx.refresh_s)
    ctx.shared["compare"] = {k: v for k, v in parts.items() if k != "list_choices"}
    ctx.poller("compare", parts["timer"])
    if ctx.demo is not None:
        ctx.demo.load(parts["list_choices"], parts["filters"], parts["list_outputs"], **QUIET)
    register_api(ctx)
