"""``memfactory worker``, ``submit`` and ``runs ...``: background runs from the command line."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from jobs.models import Run
    from jobs.store import RunStore

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

BACKENDS = ("local", "ray")
KINDS = ("train", "eval")


def _store() -> RunStore:
    from jobs.store import RunStore

    return RunStore()


def _time(t: float | None) -> str | None:
    return datetime.fromtimestamp(t).isoformat(sep=" ", timespec="seconds") if t else None


def _duration(run: Run) -> float | None:
    from jobs.models import ACTIVE_STATUSES

    if run.started_at is None:
        return None
    end = run.finished_at or (time.time() if run.status in ACTIVE_STATUSES else None)
    return round(end - run.started_at, 1) if end else None


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def run_record(run: Run) -> dict[str, Any]:
    """Every column of a run, JSON-ready."""
    return {c.name: getattr(run, c.name) for c in run.__table__.columns}


def error_summary(error: str | None) -> str | None:
    """One line saying what went wrong: a traceback's exception line (its last line that is
    not indented), else the first line."""
    lines = [line for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return None
    if lines[0].startswith("Traceback (most recent call last)"):
        tail = [line for line in lines if not line[:1].isspace()]
        if len(tail) > 1:
            return tail[-1].strip()
    return lines[0].strip()


def run_row(run: Run, best_reward: float | None) -> dict[str, Any]:
    """What ``runs list`` shows of a run."""
    return {
        "id": run.id, "kind": run.kind, "status": run.status, "name": run.name,
        "model": run.model, "pipeline": run.pipeline, "start": _time(run.started_at),
        "started_at": run.started_at, "finished_at": run.finished_at,
        "duration_s": _duration(run), "best_reward": best_reward, "tags": run.tags,
        "error": error_summary(run.error),
    }


# --------------------------------------------------------------------------- worker
def worker(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-n", min=1,
                                 help="Runs at a time (default: one per GPU, 1 on a CPU).")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="GPU ids for runs, e.g. 0,1 ('none': CPU only; "
                                      "default: detected).")
    ] = None,
    backend: Annotated[str, typer.Option(help="local | ray")] = "local",
    ray_address: Annotated[
        str | None, typer.Option("--ray-address",
                                 help="Ray job server (dashboard) address, e.g. "
                                      "http://HEAD:8265 (ray backend).")
    ] = None,
    heartbeat: Annotated[
        float | None, typer.Option(help="Seconds between run heartbeats "
                                        "(default: $MEMFACTORY_HEARTBEAT_S or 5).")
    ] = None,
    grace: Annotated[
        float, typer.Option(help="Seconds a stopping run gets before it is killed.")
    ] = 30.0,
    poll: Annotated[float, typer.Option(help="Seconds between scheduler rounds.")] = 1.0,
    allow_key_env: Annotated[
        list[str] | None, typer.Option("--allow-key-env", help="An environment variable "
                                       "run configs may name as api_key_env, besides "
                                       "MEMFACTORY_KEY_* (repeatable).")
    ] = None,
    allow_remote_code: Annotated[
        bool, typer.Option("--allow-remote-code", help="Let run configs set "
                                                       "trust_remote_code.")
    ] = False,
    data_root: Annotated[
        list[str] | None, typer.Option("--data-root", help="A folder whose files run configs "
                                       "may name, besides the workspace, assets/ and the "
                                       "start folder (repeatable).")
    ] = None,
) -> None:
    """Execute queued runs until stopped (Ctrl-C or SIGTERM: runs checkpoint and requeue).
    Runs get an allow-listed environment: only the API-key variables named MEMFACTORY_KEY_*
    or allowed with --allow-key-env, never the workbench login."""
    from app.cli_ui import apply_run_policy, print_data_roots
    from jobs.data_roots import record_policy
    from jobs.entry import HEARTBEAT_ENV
    from jobs.scheduler import Scheduler

    apply_run_policy(allow_key_env, allow_remote_code)
    record_policy(data_root)
    if backend not in BACKENDS:
        raise MemFactoryError(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    executor = None
    if backend == "ray":
        try:
            from jobs.ray_executor import RayExecutor
        except ImportError as exc:
            raise MemFactoryError(f"the ray backend needs Ray: pip install -e '.[ray]' ({exc})"
                                  ) from exc
        executor = RayExecutor(ray_address, stop_grace_s=grace)
    # Ray places runs on the cluster's GPUs itself; local ids mean nothing there
    gpu_list: list[str] | None = [] if backend == "ray" else None
    if gpus is not None:
        gpu_list = [] if gpus.strip().lower() in ("", "none") else [
            g.strip() for g in gpus.split(",") if g.strip()]
    if heartbeat is None:
        try:
            heartbeat = float(os.environ.get(HEARTBEAT_ENV) or 5.0)
        except ValueError as exc:
            raise MemFactoryError(f"{HEARTBEAT_ENV} is not a number of seconds") from exc
    if heartbeat <= 0:
        raise MemFactoryError("--heartbeat must be positive")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("jobs").setLevel(logging.INFO)
    store = _store()
    print_data_roots(store)
    sched = Scheduler(store, executor, max_concurrent=concurrency, gpus=gpu_list,
                      poll_s=poll, heartbeat_s=heartbeat, grace_s=grace)
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        # a second signal aborts: the runs then stop through their parent-death signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    print(f"worker {sched.worker_id}: {store.engine.url.render_as_string(hide_password=True)}, "
          f"{sched.max_concurrent} at a time, GPUs {','.join(sched.gpus) or 'none'}, "
          f"backend {sched.executor.name}, heartbeat {heartbeat:g} s", file=sys.stderr,
          flush=True)
    try:
        sched.run_forever(stop)
        if sched.active_runs:
            print(f"stopping: runs get {grace:g} s to checkpoint (again to abort)",
                  file=sys.stderr, flush=True)
    finally:
        sched.stop(terminate_runs=True)
    print("worker stopped", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- submit
def submit(
    kind: Annotated[str, typer.Argument(help="train | eval")],
    config: Annotated[Path, typer.Argument(help="Config YAML.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted.key=value overrides, e.g. max_steps=20")
    ] = None,
    name: Annotated[str | None, typer.Option(help="Run name (default: the config's).")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    notes: Annotated[str | None, typer.Option(help="Free-text notes.")] = None,
    data_root: Annotated[
        list[str] | None, typer.Option("--data-root", help="A folder the config's files may "
                                       "lie in, as the worker was told (repeatable); the "
                                       "worker checks again with its own.")
    ] = None,
) -> None:
    """Validate a config and queue it as a run; prints the run id. A worker executes it."""
    from jobs.data_roots import record_policy
    from jobs.submit import submit_run

    if kind not in KINDS:
        raise MemFactoryError(f"submit: the kind must be train or eval, not {kind!r}")
    record_policy(data_root)
    run = submit_run(_store(), kind, config, list(overrides or []), name=name,
                     tags=list(tag or []), notes=notes)
    print(run.id)
    err_console.print(f"queued {kind} run {run.id}: follow it with `memfactory runs logs "
                      f"{run.id} --follow`", highlight=False)


# ----------------------------------------------------------------------------- runs
runs_app = typer.Typer(help="List, inspect, follow, cancel and export runs.",
                       no_args_is_help=True)


@runs_app.command("list")
def runs_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    status: Annotated[
        list[str] | None, typer.Option(help="Only runs with this status (repeatable).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="Only train or eval runs.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many (newest).")] = 50,
) -> None:
    """The newest runs: id, kind, status, name, model, pipeline, start, duration, best
    reward."""
    from jobs.models import STATUSES

    for s in status or []:
        if s not in STATUSES:
            raise MemFactoryError(f"--status {s!r} is not one of {', '.join(STATUSES)}")
    if kind is not None and kind not in KINDS:
        raise MemFactoryError(f"--kind must be train or eval, not {kind!r}")
    store = _store()
    runs = store.list_runs(status=status or None, kind=kind, limit=limit)
    best = store.best_metric([r.id for r in runs]) if runs else {}
    rows = [run_row(r, best.get(r.id)) for r in runs]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for col in ("id", "kind", "status", "name", "model", "pipeline", "start", "duration",
                "best reward"):
        table.add_column(col, justify="right" if col in ("id", "duration", "best reward")
                         else "left", no_wrap=True,
                         overflow="ellipsis" if col in ("name", "model") else "fold")
    for row in rows:
        best_reward = row["best_reward"]
        table.add_row(str(row["id"]), row["kind"], row["status"], row["name"] or "",
                      row["model"] or "", row["pipeline"] or "", row["start"] or "-",
                      _fmt_duration(row["duration_s"]),
                      "-" if best_reward is None else f"{best_reward:.3f}")
    if not rows:
        err_console.print("no runs")
        return
    # piped output is not cut to 80 columns
    (console if console.is_terminal else Console(width=200)).print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """A run's fields, error, latest metrics and artifacts."""
    store = _store()
    run = store.get_run(run_id)
    record = run_record(run)
    record["duration_s"] = _duration(run)
    record["last_metrics"] = store.last_metrics(run_id)
    record["artifacts"] = [{"kind": a.kind, "step": a.step, "path": a.path,
                            "exists": Path(a.path).exists()} for a in store.artifacts(run_id)]
    if as_json:
        print(json.dumps(record, indent=2, default=str))
        return
    skip = {"config", "summary", "error", "last_metrics", "artifacts"}
    for key, value in record.items():
        if key in skip or value is None or value == []:
            continue
        if key.endswith("_at"):
            value = _time(value)
        console.print(f"[bold]{key}[/bold]: {value}", highlight=False, markup=True)
    if run.summary:
        console.print("[bold]summary[/bold]: " + json.dumps(run.summary), highlight=False,
                      markup=True)
    if run.error:
        console.print("[bold red]error[/bold red]:")
        console.print(run.error, markup=False, highlight=False)
    if record["last_metrics"]:
        console.print("[bold]last metrics[/bold]:")
        for name, value in record["last_metrics"].items():
            console.print(f"  {name} = {value:.6g}", markup=False, highlight=False)
    if record["artifacts"]:
        console.print("[bold]artifacts[/bold]:")
        for a in record["artifacts"]:
            step = f" step {a['step']}" if a["step"] is not None else ""
            gone = "" if a["exists"] else "  (missing)"
            console.print(f"  {a['kind']}{step}: {a['path']}{gone}", markup=False,
                          highlight=False)


@runs_app.command("logs")
def runs_logs(
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the run ends.")
    ] = False,
    tail: Annotated[int | None, typer.Option(min=0, help="Only the last N lines.")] = None,
    interval: Annotated[float, typer.Option(hidden=True)] = 0.5,
) -> None:
    """Print a run's log (its process's stdout and stderr)."""
    from jobs.models import FINAL_STATUSES

    store = _store()
    run = store.get_run(run_id)
    path = Path(run.log_path) if run.log_path else None
    pos = 0
    if path is not None and path.exists():
        data = path.read_bytes()
        pos = len(data)
        text = data.decode("utf-8", errors="replace")
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:]) if tail else ""
        _write(text)
    elif not follow:
        err_console.print(f"run {run_id} ({run.status}) has no log yet")
        return
    while follow:
        final = store.get_run(run_id).status in FINAL_STATUSES
        if path is not None and path.exists():
            with path.open("rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            _write(chunk.decode("utf-8", errors="replace"))
        if final:  # read once more after the run ended: nothing is written after that
            break
        time.sleep(interval)


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


@runs_app.command("cancel")
def runs_cancel(run_id: Annotated[int, typer.Argument(help="Run id.")]) -> None:
    """Cancel a run: a queued one at once, a running one at its next step (checkpointed)."""
    from jobs.models import FINAL_STATUSES

    store = _store()
    before = store.get_run(run_id).status
    status = store.request_cancel(run_id)
    if before in FINAL_STATUSES:
        console.print(f"run {run_id} already ended: {before}")
    elif status == "cancelled":
        console.print(f"run {run_id} cancelled")
    else:
        console.print(f"run {run_id} ({status}): cancel requested; it stops at its next step")


@runs_app.command("export")
def runs_export(
    run_id: Annotated[int, typer.Argument(help="Run id.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder (default ./run-ID).")
    ] = None,
    copy_artifacts: Annotated[
        bool, typer.Option("--copy-artifacts/--list-artifacts",
                           help="Copy artifact files into the folder, or only list them.")
    ] = True,
) -> None:
    """Write a run to a folder: config.yaml, metrics.csv (one row per step), samples.jsonl,
    run.json, the log and its artifacts."""
    from memfactory_core.config import check_output_dir

    folder = check_output_dir(output or Path(f"run-{run_id}"), what="--output")
    out = export_run(_store(), run_id, folder, copy_artifacts)
    print(out)


def export_run(store: RunStore, run_id: int, out: Path, copy_artifacts: bool = True) -> Path:
    """Export run ``run_id`` into folder ``out`` (see ``runs export``); returns ``out``."""
    import yaml

    run = store.get_run(run_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False,
                                                    allow_unicode=True), encoding="utf-8")
    series = store.metrics(run_id)[run_id]
    names = sorted(series)
    table: dict[int, dict[str, float]] = {}
    for name, (steps, values) in series.items():
        for step, value in zip(steps, values, strict=True):
            table.setdefault(step, {})[name] = value
    with (out / "metrics.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *names])
        for step in sorted(table):
            writer.writerow([step, *(table[step].get(n, "") for n in names)])
    with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
        for s in store.samples(run_id):
            f.write(json.dumps({"step": s.step, "kind": s.kind, "data": s.data},
                               ensure_ascii=False) + "\n")
    artifacts = []
    used: set[str] = set()
    for a in store.artifacts(run_id):
        src = Path(a.path)
        entry: dict[str, Any] = {"kind": a.kind, "step": a.step, "path": a.path,
                                 "exists": src.exists(), "exported": None}
        if copy_artifacts and src.exists():
            name = src.name
            while name in used:
                name = f"{a.kind}-{a.id}-{src.name}"
            used.add(name)
            dest = out / "artifacts" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dest, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dest)
            entry["exported"] = str(dest.relative_to(out))
        artifacts.append(entry)
    if run.log_path and Path(run.log_path).exists():
        shutil.copy2(run.log_path, out / "run.log")
    record = run_record(run)
    record["last_metrics"] = store.last_metrics(run_id)
    record["artifacts"] = artifacts
    (out / "run.json").write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return out


def register(app: typer.Typer) -> None:
    """Add the run commands to the ``memfactory`` application."""
    app.command()(worker)
    app.command(context_settings={"allow_extra_args": True})(submit)
    app.add_typer(runs_app, name="runs")
