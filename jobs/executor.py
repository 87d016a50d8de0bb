"""How a scheduler starts, watches and stops run processes: the contract that the local
(subprocess) executor and the Ray executor both fulfil."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


def run_command(run_id: int) -> list[str]:
    """The entry point every executor starts: one run, in its own Python process."""
    return [sys.executable, "-m", "jobs.entry", str(run_id)]


@dataclass
class RunHandle:
    """A launched run, as its executor tracks it."""

    run_id: int
    log_path: Path
    pid: int | None = None
    external_id: str | None = None
    #: executor-specific state (the Popen object, a Ray client, ...)
    extra: dict[str, object] = field(default_factory=dict)


class Executor(Protocol):
    """Starts run processes and reports when they end. Implementations never touch the
    store: the scheduler records what they report."""

    name: str

    def launch(self, run_id: int, env: dict[str, str], log_path: Path) -> RunHandle:
        """Start ``run_command(run_id)`` with ``env`` added to the environment, its stdout
        and stderr going to ``log_path`` (appended: a resumed run keeps its earlier log)."""
        ...

    def poll(self, handle: RunHandle) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal),
        None while it runs."""
        ...

    def terminate(self, handle: RunHandle) -> None:
        """Ask the process to stop (SIGTERM): a training run saves a checkpoint and exits."""
        ...

    def kill(self, handle: RunHandle) -> None:
        """Stop it now (SIGKILL)."""
        ...

    def sync_logs(self, handle: RunHandle) -> None:
        """Bring the log file up to date (remote executors); a no-op for local processes."""
        ...
