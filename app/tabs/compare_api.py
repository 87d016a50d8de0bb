"""The Compare tab's named API endpoints (``gradio_client``: ``Client(url).predict([3, 4], 3,
api_name="/compare_runs")``). User errors come back as ``gr.Error`` with a clear message."""

# No ``from __future__ import annotations`` here: gr.api reads the endpoints' annotations
# as objects to describe them.

from typing import TYPE_CHECKING, Any

import gradio as gr

from app import compare
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from app.context import AppContext

EXPORT_FORMATS = ("csv", "json", "html")


def _ids(values: Any, what: str = "run_ids") -> list[int]:
    items = values if isinstance(values, list | tuple) else [values]
    out = []
    for v in items:
        if isinstance(v, bool):
            raise gr.Error(f"{what}: {v!r} is not a run id", print_exception=False)
        try:
            out.append(int(str(v).lstrip("#")))
        except (TypeError, ValueError):
            raise gr.Error(f"{what}: {v!r} is not a run id", print_exception=False) from None
    return out


def register_api(ctx: "AppContext") -> None:
    """``/compare_runs``, ``/compare_questions``, ``/compare_export`` and ``/annotate_run``."""
    store = ctx.store

    def _compare(run_ids: list[int], base_id: int | None, metrics: list[str] | None,
                 differences_only: bool = True, cluster: bool = False
                 ) -> tuple[list[Any], dict[str, Any]]:
        try:
            return compare.compare_stored_runs(
                store, _ids(run_ids), None if base_id is None else _ids(base_id, "base_id")[0],
                metrics or None, bool(differences_only), bool(cluster))
        except MemFactoryError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def compare_runs(run_ids: list[int], base_id: int | None = None,
                     metrics: list[str] | None = None, differences_only: bool = True,
                     cluster: bool = False) -> dict[str, Any]:
        """Compare stored runs against ``base_id`` (default: the first): ``table`` (each
        metric's mean and 95% CI; against the base, the paired bootstrap difference,
        relative difference, their CIs, ``n_paired`` and ``significant``; per context
        length and category where the results have several), ``config_diff`` (settings that
        differ, dotted; all of them with ``differences_only`` false), ``runs``,
        ``timings``. ``cluster``: resample whole episodes (conversations) rather than single
        questions. NaN is null, infinities are the strings "inf" / "-inf"."""
        _, comparison = _compare(run_ids, base_id, metrics, differences_only, cluster)
        return compare.jsonable(comparison)

    def compare_questions(base_id: int, run_id: int, metric: str,
                          limit: int = 50) -> dict[str, Any]:
        """The questions where run ``run_id`` scores above (``wins``) and below (``losses``)
        the base run on ``metric``, biggest gaps first, with both predictions."""
        runs, _ = _compare([*_ids(base_id, "base_id"), *_ids(run_id, "run_id")], base_id, None)
        if len(runs) < 2:
            raise gr.Error("compare a run with another one, not with itself",
                           print_exception=False)
        try:
            view = compare.question_diffs(runs[0], runs[1], metric,
                                          limit=max(1, min(int(limit), 1000)))
        except MemFactoryError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return compare.jsonable(view)

    def compare_export(run_ids: list[int], base_id: int | None = None,
                       format: str = "csv", cluster: bool = False) -> str:
        """The comparison as text: ``csv`` (the evaluation table), ``json`` (everything) or
        ``html`` (a standalone report with the figures, plotly.js inlined)."""
        if format not in EXPORT_FORMATS:
            raise gr.Error(f"format must be one of {', '.join(EXPORT_FORMATS)}, not "
                           f"{format!r}", print_exception=False)
        runs, comparison = _compare(run_ids, base_id, None, True, cluster)
        if format == "csv":
            return compare.table_csv(comparison["table"])
        if format == "json":
            return compare.comparison_json(comparison)
        return compare.report_html(comparison, compare.comparison_figures(runs, store=store))

    def annotate_run(run_id: int, tags: list[str] | None = None,
                     notes: str | None = None) -> dict[str, Any]:
        """Set a run's tags and/or notes (None leaves that field as it is); returns both."""
        i = _ids(run_id, "run_id")[0]
        try:
            store.get_run(i)
            values: dict[str, Any] = {}
            if tags is not None:
                values["tags"] = compare.parse_tags(tags)
            if notes is not None:
                values["notes"] = compare.check_notes(str(notes))
            if values:
                store.update_run(i, **values)
            run = store.get_run(i)
        except MemFactoryError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return {"id": run.id, "tags": list(run.tags or []), "notes": run.notes}

    for fn in (compare_runs, compare_questions, compare_export, annotate_run):
        ctx.api(fn)
