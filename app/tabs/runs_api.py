"""The Runs tab's named API endpoints (``gradio_client``: ``Client(url).predict(...,
api_name="/get_run")``). User errors come back as ``gr.Error`` with a clear message."""

# No ``from __future__ import annotations`` here: gr.api reads the endpoints' annotations
# as objects to describe them.

import math
from typing import TYPE_CHECKING, Any

import gradio as gr

from app.services import LOG_LINES, log_tail, parse_run_id, run_record, submit_config_text
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from app.context import AppContext


def _finite(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def _run_id(value: Any) -> int:
    try:
        return parse_run_id(value)
    except MemFactoryError as err:
        raise gr.Error(str(err), print_exception=False) from None


def register_api(ctx: "AppContext") -> None:
    """Named endpoints for ``gradio_client``; user errors come back as ``gr.Error``."""
    store = ctx.store

    def list_runs(status: str | None = None, kind: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
        """The newest runs, with their best reward. ``status``: one status or several
        separated by commas; ``kind``: train or eval."""
        statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
        try:
            count = max(1, min(int(limit), 10_000))
        except (TypeError, ValueError, OverflowError):
            raise gr.Error(f"limit must be a whole number, got {limit!r}") from None
        listed = store.list_runs(status=statuses, kind=kind or None, limit=count)
        best = store.best_metric([r.id for r in listed]) if listed else {}
        return [run_record(r, best.get(r.id)) for r in listed]

    def get_run(run_id: int) -> dict[str, Any]:
        """Everything about one run; its config as YAML text under ``config_yaml``."""
        try:
            run = store.get_run(_run_id(run_id))
        except MemFactoryError as err:
            raise gr.Error(str(err)) from None
        best = store.best_metric([run.id])[run.id]
        return run_record(run, best, config=True)

    def run_metrics(run_id: int,
                    names: list[str] | None = None) -> dict[str, dict[str, list[Any]]]:
        """``{name: {"steps": [...], "values": [...]}}`` of a run (all metrics, or
        ``names``)."""
        i = _run_id(run_id)
        data = store.metrics(i, names or None)[i]
        return {name: {"steps": list(steps), "values": _finite(list(values))}
                for name, (steps, values) in data.items()}

    def run_log(run_id: int, lines: int = LOG_LINES) -> str:
        """The last ``lines`` lines of a run's log."""
        i = _run_id(run_id)
        try:
            count = max(1, min(int(lines), 10_000))
        except (TypeError, ValueError, OverflowError):
            raise gr.Error(f"lines must be a whole number, got {lines!r}") from None
        try:
            run = store.get_run(i)
        except MemFactoryError as err:
            raise gr.Error(str(err)) from None
        return log_tail(run.log_path, count)

    def submit_run(kind: str, config_yaml: str, name: str | None = None) -> dict[str, Any]:
        """Validate a YAML config and queue it as a ``kind`` (train | eval) run; returns the
        queued run. An invalid config raises an error listing every problem with its
        location, and nothing is stored."""
        try:
            run = submit_config_text(store, kind, config_yaml, name)
        except MemFactoryError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return run_record(run)

    def cancel_run(run_id: int) -> str:
        """Ask a run to stop; returns its status (a queued run is cancelled at once, an
        active one stops at its next step)."""
        try:
            return store.request_cancel(_run_id(run_id))
        except MemFactoryError as err:
            raise gr.Error(str(err)) from None

    for fn in (list_runs, get_run, run_metrics, run_log, submit_run, cancel_run):
        ctx.api(fn)
