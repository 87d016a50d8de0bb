"""The scheduler: claims queued runs, starts each in its own process through an executor,
watches them (exit, cancel, grace period) and recovers runs whose worker or process is gone.

Any number of schedulers may share one database: claims are atomic, and every status change
a scheduler makes is conditional on the run still being at the attempt it saw, so a run is
never executed twice nor its newer attempt overwritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from jobs.entry import ATTEMPT_ENV, HEARTBEAT_ENV
from jobs.executor import Executor, RunHandle
from jobs.models import ACTIVE_STATUSES, Run
from jobs.store import RunStore, host_name, pid_alive, runs_dir

log = logging.getLogger("jobs.scheduler")

LOG_TAIL_CHARS = 2000


def detect_gpus() -> list[str]:
    """GPU ids this machine offers runs: ``CUDA_VISIBLE_DEVICES`` when set, else what
    ``nvidia-smi`` lists, else none (a CPU machine)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def describe_exit(code: int) -> str:
    """``exited with code 1`` / ``killed by SIGKILL``."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _worker_pid(worker: str | None) -> int | None:
    """The pid in a worker id made on this host (``host:pid:suffix``), else None."""
    if not worker:
        return None
    parts = worker.split(":")
    if len(parts) < 3 or not parts[-2].isdigit() or ":".join(parts[:-2]) != host_name():
        return None
    return int(parts[-2])


def _same_process(pid: int, started_at: float | None) -> bool:
    """Whether ``pid`` is alive and was started before ``started_at`` (a pid reused by a
    later process does not count)."""
    if not pid_alive(pid):
        return False
    if started_at is None:
        return True
    try:
        import psutil

        return psutil.Process(pid).create_time() <= started_at + 1.0
    except Exception:
        return True


def _append_log(path: str | Path | None, message: str) -> None:
    if not path:
        return
    with contextlib.suppress(OSError):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("a", encoding="utf-8") as f:
            f.write(f"[{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}] scheduler: {message}\n")


def _log_tail(path: str | Path | None, chars: int = LOG_TAIL_CHARS) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - chars)
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    if start > 0 and "\n" in text:
        text = text.split("\n", 1)[1]  # from the first whole line
    return text.strip()


@dataclass
class _Active:
    """A run this scheduler launched and watches."""

    handle: RunHandle
    attempt: int
    resumable: bool
    log_path: str
    gpus: list[str] = field(default_factory=list)
    terminated_at: float | None = None
    final_seen_at: float | None = None
    killed: bool = False


class Scheduler:
    """Claims queued runs and executes them, ``max_concurrent`` at a time.

    ``executor`` starts the run processes (default :class:`~jobs.local_executor.LocalExecutor`).
    ``gpus``: the GPU ids runs may use, one per run through ``CUDA_VISIBLE_DEVICES`` (None:
    detected; empty: a CPU machine, nothing set). ``max_concurrent`` defaults to the number of
    GPUs, or 1 without any. Runs heartbeat every ``heartbeat_s``; one whose worker is gone and
    whose process is dead (this host) or whose heartbeat is older than two periods (other
    hosts) is failed "worker lost", or requeued when resumable (up to ``max_attempts``
    attempts). A cancelled run gets SIGTERM, then SIGKILL after ``grace_s``.
    """

    def __init__(
        self,
        store: RunStore,
        executor: Executor | None = None,
        max_concurrent: int | None = None,
        gpus: list[str] | list[int] | None = None,
        poll_s: float = 1.0,
        heartbeat_s: float = 5.0,
        grace_s: float = 30.0,
        worker_id: str | None = None,
        max_attempts: int = 3,
    ) -> None:
        if executor is None:
            from jobs.local_executor import LocalExecutor

            executor = LocalExecutor()
        self.store = store
        self.executor = executor
        self.gpus = detect_gpus() if gpus is None else [str(g) for g in gpus]
        self.max_concurrent = max_concurrent or (len(self.gpus) or 1)
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.max_attempts = max_attempts
        self.worker_id = worker_id or f"{host_name()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stale_after_s = 2 * heartbeat_s + max(poll_s, 0.5)
        self._active: dict[int, _Active] = {}
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_recover = 0.0
        self._stopping = False

    # ------------------------------------------------------------------ state
    @property
    def active_runs(self) -> list[int]:
        """Ids of the runs whose processes this scheduler watches."""
        with self._lock:
            return sorted(self._active)

    def free_gpus(self) -> list[str]:
        """GPU ids no run of this scheduler holds."""
        with self._lock:
            used = {g for a in self._active.values() for g in a.gpus}
        return [g for g in self.gpus if g not in used]

    # ------------------------------------------------------------------- loop
    def tick(self) -> None:
        """One round: reap ended processes, enforce cancels, recover lost runs (every
        heartbeat period), claim and launch queued runs up to the limits."""
        with self._lock:
            for step in (self._reap, self._watch, self._maybe_recover, self._claim):
                try:
                    step()
                except Exception:  # a database hiccup must not end the worker
                    log.exception("scheduler %s: %s failed", self.worker_id,
                                  step.__name__.strip("_"))

    def run_forever(self, stop_event: threading.Event | None = None) -> None:
        """Recover, then tick every ``poll_s`` until ``stop_event`` is set."""
        event = stop_event or self._stop_event
        try:
            self.recover()
        except Exception:
            log.exception("scheduler %s: recovery failed", self.worker_id)
        while not event.is_set() and not self._stop_event.is_set():
            self.tick()
            event.wait(self.poll_s)

    def start(self) -> threading.Thread:
        """Run :meth:`run_forever` in a background thread (the UI's embedded scheduler)."""
        if self._thread is not None and self._thread.is_alive():
            return self._thread
        self._stop_event.clear()
        self._stopping = False
        self._thread = threading.Thread(target=self.run_forever, name="memfactory-scheduler",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, terminate_runs: bool = True) -> None:
        """Stop claiming. With ``terminate_runs``, ask every run to stop (SIGTERM: training
        checkpoints and goes back to the queue), kill what is left after ``grace_s`` and
        settle their statuses. Without it the processes are left alone (on Linux they still
        get SIGTERM when the thread that launched them ends)."""
        self._stopping = True
        self._stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if not terminate_runs:
            return
        with self._lock:
            for act in self._active.values():
                if act.terminated_at is None:
                    self._terminate(act)
            deadline = time.monotonic() + self.grace_s
            while self._active and time.monotonic() < deadline:
                self._reap(shutdown=True)
                time.sleep(min(0.1, self.poll_s))
            for act in self._active.values():
                self._kill(act)
            deadline = time.monotonic() + 10.0
            while self._active and time.monotonic() < deadline:
                self._reap(shutdown=True)
                time.sleep(0.05)

    # --------------------------------------------------------------- reaping
    def _reap(self, shutdown: bool = False) -> None:
        for run_id, act in list(self._active.items()):
            code = self.executor.poll(act.handle)
            if code is None:
                continue
            with contextlib.suppress(Exception):
                self.executor.sync_logs(act.handle)
            self._settle_ended(run_id, act, code, shutdown)  # on a database error: next round
            del self._active[run_id]

    def _settle_ended(self, run_id: int, act: _Active, code: int, shutdown: bool) -> None:
        """The process of a run ended: a run it left active gets its final status here."""
        run = self.store.get_run(run_id)
        if run.status not in ACTIVE_STATUSES or run.attempts != act.attempt:
            return  # the run wrote its own status (or was requeued and claimed again)
        what = f"run process {describe_exit(code)}"
        if run.cancel_requested_at is not None:
            self.store.finish(run_id, "cancelled", error=what, attempt=act.attempt)
        elif shutdown and run.resumable and run.attempts < self.max_attempts:
            self.store.requeue(run_id, f"worker stopped ({what})", attempt=act.attempt)
        else:
            tail = _log_tail(act.log_path)
            error = f"{what}\n--- end of the run's log ---\n{tail}" if tail else what
            self.store.finish(run_id, "failed", error=error, attempt=act.attempt)
        _append_log(act.log_path, what)
        log.info("run %s: %s", run_id, what)

    # -------------------------------------------------------------- watching
    def _watch(self) -> None:
        now = time.monotonic()
        for run_id, act in list(self._active.items()):
            with contextlib.suppress(Exception):  # remote executors mirror logs as they go
                self.executor.sync_logs(act.handle)
            run = self.store.get_run(run_id)
            mine = run.attempts == act.attempt and run.status in ACTIVE_STATUSES
            if mine and run.cancel_requested_at is not None and act.terminated_at is None:
                log.info("run %s: cancel requested, sending SIGTERM", run_id)
                _append_log(act.log_path, "cancel requested: SIGTERM")
                self._terminate(act)
            elif not mine and act.final_seen_at is None:
                # its status is settled (by itself, usually, just before it exits)
                act.final_seen_at = now
            elif not mine and act.terminated_at is None and now - act.final_seen_at > self.grace_s:
                self._terminate(act)
            if (act.terminated_at is not None and not act.killed
                    and now - act.terminated_at > self.grace_s):
                log.info("run %s: still running %.0f s after SIGTERM, killing it", run_id,
                         self.grace_s)
                _append_log(act.log_path, f"no exit {self.grace_s:g} s after SIGTERM: SIGKILL")
                self._kill(act)

    def _terminate(self, act: _Active) -> None:
        act.terminated_at = time.monotonic()
        with contextlib.suppress(Exception):
            self.executor.terminate(act.handle)

    def _kill(self, act: _Active) -> None:
        act.killed = True
        with contextlib.suppress(Exception):
            self.executor.kill(act.handle)

    # -------------------------------------------------------------- claiming
    def _claim(self) -> None:
        while not self._stopping and len(self._active) < self.max_concurrent:
            gpus: list[str] = []
            if self.gpus:
                free = self.free_gpus()
                if not free:
                    return
                gpus = free[:1]
            run = self.store.claim_next(self.worker_id)
            if run is None:
                return
            self._launch(run, gpus)

    def _launch(self, run: Run, gpus: list[str]) -> None:
        log_path = run.log_path or str(runs_dir() / str(run.id) / "run.log")
        if run.cancel_requested_at is not None:
            self.store.finish(run.id, "cancelled", attempt=run.attempts)
            return
        env = {"MEMFACTORY_DB_URL": self.store.url, HEARTBEAT_ENV: f"{self.heartbeat_s:g}",
               ATTEMPT_ENV: str(run.attempts), "PYTHONUNBUFFERED": "1"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        _append_log(log_path, f"attempt {run.attempts} claimed by {self.worker_id}"
                    + (f" on GPU {','.join(gpus)}" if gpus else ""))
        try:
            handle = self.executor.launch(run.id, env, Path(log_path))
        except Exception as exc:
            what = f"could not start the run process: {type(exc).__name__}: {exc}"
            _append_log(log_path, what)
            self.store.finish(run.id, "failed", error=what, attempt=run.attempts)
            log.error("run %s: %s", run.id, what)
            return
        self._active[run.id] = _Active(handle=handle, attempt=run.attempts,
                                       resumable=run.resumable, log_path=log_path, gpus=gpus)
        if run.backend != self.executor.name:
            self.store.update_run(run.id, backend=self.executor.name)
        self.store.mark_running(run.id, pid=handle.pid, external_id=handle.external_id,
                                gpus=",".join(gpus) or None)
        log.info("run %s (%s) started: attempt %s, pid %s", run.id, run.kind, run.attempts,
                 handle.pid)

    # -------------------------------------------------------------- recovery
    def _maybe_recover(self) -> None:
        if time.monotonic() - self._last_recover >= self.heartbeat_s:
            self.recover()

    def recover(self) -> list[int]:
        """Settle active runs nobody watches any more: failed "worker lost", cancelled when a
        cancel was requested, or requeued when resumable. Returns their ids."""
        with self._lock:
            self._last_recover = time.monotonic()
            settled = []
            now = time.time()
            for run in self.store.list_runs(status=ACTIVE_STATUSES):
                act = self._active.get(run.id)
                if act is not None and act.attempt == run.attempts:
                    continue
                reason = self._lost_reason(run, now)
                if reason is not None and self._settle_lost(run, reason):
                    settled.append(run.id)
            return settled

    def _lost_reason(self, run: Run, now: float) -> str | None:
        """Why ``run`` counts as lost, or None while someone may still be running it."""
        if run.host == host_name():
            owner = _worker_pid(run.worker)
            if owner is not None and pid_alive(owner) and (
                    owner != os.getpid() or run.worker != self.worker_id):
                return None  # its worker is alive and watches it
            if run.pid:
                if _same_process(run.pid, run.started_at):
                    return None
                return f"worker lost (run process {run.pid} is gone)"
        beat = run.heartbeat_at or run.started_at or run.created_at
        if now - beat > self.stale_after_s:
            return f"worker lost (no heartbeat for {now - beat:.0f} s)"
        return None

    def _settle_lost(self, run: Run, reason: str) -> bool:
        if run.cancel_requested_at is not None:
            done = self.store.finish(run.id, "cancelled", error=reason, attempt=run.attempts)
            status = "cancelled"
        elif run.resumable and run.attempts < self.max_attempts:
            done = self.store.requeue(run.id, f"{reason}; resumes from its last checkpoint",
                                      attempt=run.attempts)
            status = "requeued"
        else:
            done = self.store.finish(run.id, "failed", error=reason, attempt=run.attempts)
            status = "failed"
        if done:
            _append_log(run.log_path, f"{reason}: {status} by {self.worker_id}")
            log.warning("run %s: %s: %s", run.id, reason, status)
        return done
