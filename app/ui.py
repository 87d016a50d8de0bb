"""The Gradio workbench: :func:`build_app` assembles the tabs and the named API endpoints,
:func:`launch` serves it (loopback by default; any other address needs authentication).

Each tab is a module under ``app/tabs`` with a ``register(ctx)`` function that receives one
:class:`app.context.AppContext` and adds its components, events and named API endpoints
(``gradio_client``: ``Client(url).predict(..., api_name="/list_runs")``).
"""

# No ``from __future__ import annotations`` here: gr.api reads the endpoints' return
# annotations as objects to describe them.

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr

from app.auth import ThrottledAuth
from app.context import AppContext, TabSpec
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from jobs.scheduler import Scheduler

TITLE = "MemFactory"
LOOPBACK_NAMES = ("localhost",)
CSS = "#runs-log textarea { font-family: ui-monospace, monospace; font-size: 12px; }"
REFRESH_S = 2.0
"""Seconds between two polls of the store by a visible tab."""
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def static_paths() -> list[Path]:
    """Folders the app serves at ``/gradio_api/file=<absolute path>``: its own scripts and
    the vendored libraries (nothing else from the disk)."""
    return [ASSETS / "static", ASSETS / "vendor"]


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


def tab_specs() -> list[TabSpec]:
    """The workbench's tabs, in order. Adding a tab is one line here: a module with a
    ``register(ctx)`` function."""
    from app.tabs import build, chat, compare, evaluate, runs, train

    return [
        TabSpec("Build", "build", build.register),
        TabSpec("Train", "train", train.register),
        TabSpec("Evaluate", "evaluate", evaluate.register),
        TabSpec("Runs", "runs", runs.register),
        TabSpec("Compare", "compare", compare.register),
        TabSpec("Chat", "chat", chat.register),
    ]


def build_app(store: RunStore, scheduler: "Scheduler | None" = None,
              refresh_s: float = REFRESH_S, selected: str | None = None) -> gr.Blocks:
    """The workbench over ``store``: every tab of :func:`tab_specs` (pollers every
    ``refresh_s`` seconds while their tab is visible) and their named API endpoints.
    ``scheduler`` (optional) is the one executing runs in this process; ``selected`` the
    tab shown first."""
    gr.set_static_paths(static_paths())
    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}\nCompose, train and evaluate memory-augmented LLM agents.")
        ctx = AppContext(store=store, scheduler=scheduler, refresh_s=refresh_s, demo=demo)
        ctx.build_tabs(tab_specs(), selected=selected)
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
    refresh_s: float = REFRESH_S,
) -> gr.Blocks:
    """Build and serve the workbench; returns the running app (``.close()`` stops it).

    Anything but a loopback address, and any share link, needs ``auth``.
    """
    check_exposure(host, auth, share)
    demo = build_app(store or RunStore(), scheduler, refresh_s=refresh_s)
    try:
        demo.launch(server_name=host, server_port=port,
                    auth=ThrottledAuth(*auth) if auth else None, share=share,
                    prevent_thread_lock=prevent_thread_lock, quiet=quiet, css=CSS,
                    auth_message="MemFactory workbench" if auth else None,
                    inbrowser=False)
    except OSError as err:
        raise MemFactoryError(f"cannot listen on {host}:{port}: {err}") from err
    return demo
