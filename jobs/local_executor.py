"""Runs on this machine: one subprocess per run, in its own session, with an allow-listed
environment (:mod:`jobs.run_env`), its output appended to the run's log file."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from jobs.executor import RunHandle, run_command
from jobs.run_env import run_environment

PR_SET_PDEATHSIG = 1


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux), so the
    runs of a killed worker stop gracefully (checkpoint, requeue) instead of running on
    unwatched. Everything it needs is resolved here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigterm = int(signal.SIGTERM)
    getppid, kill, getpid = os.getppid, os.kill, os.getpid

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if getppid() != parent:  # the parent died before prctl took effect
            kill(getpid(), sigterm)

    return preexec


class LocalExecutor:
    """The :class:`~jobs.executor.Executor` for subprocesses on this host.

    ``command`` builds the argument list of a run (default: ``python -m jobs.entry ID``).
    Note that on Linux the parent-death signal follows the *thread* that launched a run: a
    scheduler must launch from a thread that lives as long as its runs should.
    """

    name = "local"

    def __init__(self, command: Callable[[int], list[str]] = run_command) -> None:
        self.command = command

    def launch(self, run_id: int, env: dict[str, str], log_path: Path) -> RunHandle:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab", buffering=0) as log:
            proc = subprocess.Popen(
                self.command(run_id), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, env=run_environment(env), close_fds=True,
                start_new_session=True, preexec_fn=_pdeathsig_preexec(),
            )
        return RunHandle(run_id=run_id, log_path=log_path, pid=proc.pid, extra={"proc": proc})

    def poll(self, handle: RunHandle) -> int | None:
        proc = handle.extra.get("proc")
        if isinstance(proc, subprocess.Popen):
            return proc.poll()
        raise ValueError(f"run {handle.run_id} was not launched by this executor")

    def terminate(self, handle: RunHandle) -> None:
        # only the run's main process: it stops its own children once it has checkpointed
        self._signal(handle, signal.SIGTERM, group=False)

    def kill(self, handle: RunHandle) -> None:
        self._signal(handle, signal.SIGKILL, group=True)

    def sync_logs(self, handle: RunHandle) -> None:
        """Local processes write their log directly."""

    @staticmethod
    def _signal(handle: RunHandle, sig: signal.Signals, group: bool) -> None:
        proc = handle.extra.get("proc")
        if not isinstance(proc, subprocess.Popen) or proc.poll() is not None:
            if group and handle.pid:  # the leader is gone; its group may linger
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(handle.pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
