"""``memfactory ui``: the Gradio workbench with an embedded scheduler."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from jobs.scheduler import Scheduler

AUTH_ENV = "MEMFACTORY_UI_AUTH"


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` as a pair (None for no value). The error never echoes the value."""
    if value is None or value == "":
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise MemFactoryError(f"--auth / {AUTH_ENV} must be USER:PASSWORD, both non-empty")
    return user, password


def parse_share(value: str) -> bool:
    """``off`` (the default) or ``on``."""
    choice = value.strip().lower()
    if choice not in ("off", "on"):
        raise MemFactoryError(f"--share must be off or on, not {value!r}")
    return choice == "on"


def ui(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback "
                                           "needs --auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 7860,
    auth: Annotated[
        str | None, typer.Option(help=f"USER:PASSWORD required to open the page (default: "
                                      f"${AUTH_ENV}).", show_default=False)
    ] = None,
    no_scheduler: Annotated[
        bool, typer.Option("--no-scheduler", help="Only show and queue runs; a separate "
                                                  "`memfactory worker` executes them.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Runs at a time (default: one per GPU, 1 on "
                                             "a CPU).")
    ] = None,
    share: Annotated[
        str, typer.Option(help="off | on: a public share link (needs --auth).")
    ] = "off",
) -> None:
    """Serve the browser workbench. Its scheduler executes queued runs; on exit (Ctrl-C)
    training runs checkpoint and return to the queue, so nothing is lost."""
    from app.ui import check_exposure, launch
    from jobs.store import RunStore

    credentials = parse_auth(auth if auth is not None else os.environ.get(AUTH_ENV))
    share_on = parse_share(share)
    check_exposure(host, credentials, share_on)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("jobs").setLevel(logging.INFO)
    store = RunStore()
    scheduler: Scheduler | None = None
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        # a second signal aborts at once: the runs then stop through their parent-death signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    demo = None
    try:
        if not no_scheduler:
            from jobs.entry import heartbeat_period
            from jobs.scheduler import Scheduler

            scheduler = Scheduler(store, max_concurrent=concurrency,
                                  heartbeat_s=heartbeat_period())
            scheduler.start()
        demo = launch(store, scheduler, host=host, port=port, auth=credentials,
                      share=share_on, prevent_thread_lock=True, quiet=True)
        where = getattr(demo, "share_url", None) or getattr(demo, "local_url", None)
        executes = (f"scheduler: {scheduler.max_concurrent} run(s) at a time"
                    if scheduler else "no scheduler (run `memfactory worker`)")
        login = f"login required (user {credentials[0]})" if credentials else "no login"
        print(f"MemFactory workbench at {where or f'http://{host}:{port}'}  ({executes}; "
              f"{login}; database {store.engine.url.render_as_string(hide_password=True)})",
              file=sys.stderr, flush=True)
        print("Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if demo is not None:
            demo.close()
        if scheduler is not None:
            if scheduler.active_runs:
                print(f"stopping: runs get {scheduler.grace_s:g} s to checkpoint (Ctrl-C "
                      "again to abort)", file=sys.stderr, flush=True)
            scheduler.stop(terminate_runs=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("workbench stopped", file=sys.stderr, flush=True)


def register(app: typer.Typer) -> None:
    """Add the ``ui`` command to the ``memfactory`` application."""
    app.command(name="ui")(ui)
