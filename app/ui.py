"""The Gradio workbench: :func:`build_app` assembles the tabs and the named API endpoints,
:func:`launch` serves it (loopback by default; any other address needs authentication).

API endpoints (``gradio_client``: ``Client(url).predict(..., api_name="/list_runs")``):
``list_runs``, ``get_run``, ``run_metrics``, ``run_log``, ``submit_run``, ``cancel_run``.
"""

# No ``from __future__ import annotations`` here: gr.api reads the endpoints' return
# annotations as objects to describe them.

import ipaddress
import math
from typing import TYPE_CHECKING, Any

import gradio as gr

from app.tabs import runs
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from jobs.scheduler import Scheduler

TITLE = "MemFactory"
LOOPBACK_NAMES = ("localhost",)
CSS = "#runs-log textarea { font-family: ui-monospace, monospace; font-size: 12px; }"


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: tuple[str, str] | None, share: bool = False) -> None:
    """Refuse to serve beyond this machine without authentication."""
    if auth is not None:
        return
    if share:
        raise MemFactoryError("a share link exposes the workbench publicly: set "
                              "--auth USER:PASSWORD (or MEMFACTORY_UI_AUTH) to use one")
    if not is_loopback(host):
        raise MemFactoryError(f"refusing to listen on {host} without authentication: anyone "
                              "who can reach it could start runs. Set --auth USER:PASSWORD "
                              "(or MEMFACTORY_UI_AUTH), or bind 127.0.0.1")


def _finite(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def _register_api(store: RunStore) -> None:
    """Named endpoints for ``gradio_client``; user errors come back as ``gr.Error``."""

    def list_runs(status: str | None = None, kind: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
        """The newest runs, with their best reward. ``status``: one status or several
        separated by commas; ``kind``: train or eval."""
        statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
        listed = store.list_runs(status=statuses, kind=kind or None, limit=max(1, limit))
        best = store.best_metric([r.id for r in listed]) if listed else {}
        return [runs.run_record(r, best.get(r.id)) for r in listed]

    def get_run(run_id: int) -> dict[str, Any]:
        """Everything about one run, its config included."""
        try:
            run = store.get_run(int(run_id))
        except MemFactoryError as err:
            raise gr.Error(str(err)) from None
        best = store.best_metric([run.id])[run.id]
        return runs.run_record(run, best, config=True)

    def run_metrics(run_id: int,
                    names: list[str] | None = None) -> dict[str, dict[str, list[Any]]]:
        """``{name: {"steps": [...], "values": [...]}}`` of a run (all metrics, or
        ``names``)."""
        data = store.metrics(int(run_id), names or None)[int(run_id)]
        return {name: {"steps": list(steps), "values": _finite(list(values))}
                for name, (steps, values) in data.items()}

    def run_log(run_id: int, lines: int = runs.LOG_LINES) -> str:
        """The last ``lines`` lines of a run's log."""
        try:
            run = store.get_run(int(run_id))
        except MemFactoryError as err:
            raise gr.Error(str(err)) from None
        return runs.log_tail(run.log_path, max(1, min(int(lines), 10_000)))

    def submit_run(kind: str, config_yaml: str, name: str | None = None) -> dict[str, Any]:
        """Validate a YAML config and queue it as a ``kind`` (train | eval) run; returns the
        queued run. An invalid config raises an error listing every problem with its
        location, and nothing is stored."""
        try:
            run = runs.submit_config_text(store, kind, config_yaml, name)
        except MemFactoryError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return runs.run_record(run)

    def cancel_run(run_id: int) -> str:
        """Ask a run to stop; returns its status (a queued run is cancelled at once, an
        active one stops at its next step)."""
        try:
            return store.request_cancel(int(run_id))
        except MemFactoryError as err:
            raise gr.Error(str(err)) from None

    for fn in (list_runs, get_run, run_metrics, run_log, submit_run, cancel_run):
        gr.api(fn, api_name=fn.__name__)


def build_app(store: RunStore, scheduler: "Scheduler | None" = None,
              refresh_s: float = runs.REFRESH_S) -> gr.Blocks:
    """The workbench over ``store``: a Runs tab polling it every ``refresh_s`` seconds,
    and the named API endpoints. ``scheduler`` (optional) is the one executing runs in this
    process; the page says whether one does."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nCompose, train and evaluate memory-augmented LLM agents.")
        with gr.Tabs(), gr.Tab("Runs", id="runs"):
            runs.create_runs_tab(demo, store, scheduler, refresh_s=refresh_s)
        _register_api(store)
    demo.queue(default_concurrency_limit=4)
    return demo


def launch(
    store: RunStore | None = None,
    scheduler: "Scheduler | None" = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    auth: tuple[str, str] | None = None,
    share: bool = False,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
    refresh_s: float = runs.REFRESH_S,
) -> gr.Blocks:
    """Build and serve the workbench; returns the running app (``.close()`` stops it).

    Anything but a loopback address, and any share link, needs ``auth``.
    """
    check_exposure(host, auth, share)
    demo = build_app(store or RunStore(), scheduler, refresh_s=refresh_s)
    try:
        demo.launch(server_name=host, server_port=port, auth=auth, share=share,
                    prevent_thread_lock=prevent_thread_lock, quiet=quiet, css=CSS,
                    auth_message="MemFactory workbench" if auth else None,
                    inbrowser=False)
    except OSError as err:
        raise MemFactoryError(f"cannot listen on {host}:{port}: {err}") from err
    return demo
