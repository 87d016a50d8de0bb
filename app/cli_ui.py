"""``memfactory ui``: the Gradio workbench with an embedded scheduler."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.auth import AUTH_ENV, AUTH_FILE_ENV, parse_auth, read_auth_file
from memfactory_core.config import (
    ALLOW_REMOTE_CODE_ENV,
    ALLOWED_KEY_ENVS_ENV,
    NEVER_KEY_ENVS,
    RESTRICTED_ENV,
)
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from jobs.scheduler import Scheduler
    from jobs.store import RunStore


def resolve_auth(auth: str | None, auth_file: Path | None) -> tuple[str, str] | None:
    """The login from ``--auth-file``, ``$MEMFACTORY_UI_AUTH_FILE``, ``--auth`` or
    ``$MEMFACTORY_UI_AUTH`` (in that order; giving both flags is an error). ``--auth`` on
    the command line is visible to every user of the machine (``ps``): a warning says so."""
    if auth is not None and auth_file is not None:
        raise MemFactoryError("give --auth or --auth-file, not both")
    if auth_file is None and auth is None and os.environ.get(AUTH_FILE_ENV):
        auth_file = Path(os.environ[AUTH_FILE_ENV])
    if auth_file is not None:
        return read_auth_file(auth_file)
    if auth is not None:
        if auth:
            print(f"warning: --auth on the command line is visible to other users of this "
                  f"machine (ps); use --auth-file or ${AUTH_ENV} instead", file=sys.stderr,
                  flush=True)
        return parse_auth(auth)
    return parse_auth(os.environ.get(AUTH_ENV))


def apply_run_policy(allow_key_env: list[str] | None, allow_remote_code: bool) -> None:
    """Record in this process's environment what the operator lets submitted runs do; run
    processes inherit it (see :mod:`jobs.run_env`) and submissions are checked against it."""
    names = [n.strip() for item in allow_key_env or [] for n in item.split(",") if n.strip()]
    for name in names:
        if name in NEVER_KEY_ENVS:
            raise MemFactoryError(f"--allow-key-env {name}: this variable can never be an "
                                  "API key for a run")
        if not name.replace("_", "").isalnum():
            raise MemFactoryError(f"--allow-key-env {name!r} is not a variable name")
    if names:
        current = [n for n in os.environ.get(ALLOWED_KEY_ENVS_ENV, "").split(",") if n]
        os.environ[ALLOWED_KEY_ENVS_ENV] = ",".join(dict.fromkeys([*current, *names]))
    if allow_remote_code:
        os.environ[ALLOW_REMOTE_CODE_ENV] = "1"


def print_data_roots(store: RunStore) -> None:
    """Say at start-up which folders submitted configs may name."""
    from jobs.data_roots import DataRoots, sqlite_file

    roots = DataRoots.current(db_path=sqlite_file(store.engine.url))
    print(f"submitted runs may use files under: {roots.describe()}", file=sys.stderr,
          flush=True)


def parse_share(value: str) -> bool:
    """``off`` (the default) or ``on``."""
    choice = value.strip().lower()
    if choice not in ("off", "on"):
        raise MemFactoryError(f"--share must be off or on, not {value!r}")
    return choice == "on"


def ui(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback "
                                           "needs a login (--auth-file).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 7860,
    auth: Annotated[
        str | None, typer.Option(help=f"USER:PASSWORD required to open the page. Visible to "
                                      f"other users in `ps`: prefer --auth-file or "
                                      f"${AUTH_ENV}.", show_default=False)
    ] = None,
    auth_file: Annotated[
        Path | None, typer.Option("--auth-file", help=f"A file whose first line is "
                                  f"USER:PASSWORD (default: ${AUTH_FILE_ENV}, else "
                                  f"${AUTH_ENV}).", show_default=False)
    ] = None,
    allow_key_env: Annotated[
        list[str] | None, typer.Option("--allow-key-env", help="An environment variable "
                                       "submitted configs may name as api_key_env, besides "
                                       "MEMFACTORY_KEY_* (repeatable).")
    ] = None,
    allow_remote_code: Annotated[
        bool, typer.Option("--allow-remote-code", help="Let submitted configs set "
                                                       "trust_remote_code.")
    ] = False,
    data_root: Annotated[
        list[str] | None, typer.Option("--data-root", help="A folder whose files submitted "
                                       "configs may name, besides the workspace, assets/ "
                                       "and the start folder (repeatable).")
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

    credentials = resolve_auth(auth, auth_file)
    share_on = parse_share(share)
    check_exposure(host, credentials, share_on)
    apply_run_policy(allow_key_env, allow_remote_code)
    from jobs.data_roots import record_policy

    record_policy(data_root, [auth_file] if auth_file is not None else [])
    # this process executes nothing the user typed, but what does (runs, chat) must not
    # read the login: runs get an allow-listed environment, and the variable goes
    os.environ.pop(AUTH_ENV, None)
    os.environ[RESTRICTED_ENV] = "1"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("jobs").setLevel(logging.INFO)
    store = RunStore()
    print_data_roots(store)
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
