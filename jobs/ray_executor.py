"""Runs as Ray jobs on an existing Ray cluster (``memfactory worker --backend ray``).

Each run is submitted through Ray's job submission API with the same entry point as a local
run (``python -m jobs.entry <run id>``); the run process writes its status, heartbeats and
metrics to the store itself, and this executor mirrors the job's state and its driver log
(stdout and stderr) into the run's log file.

What the cluster must provide:

- MemFactory importable by the interpreter that starts the job: installed at the same path on
  every node (the entry point uses this machine's ``sys.executable`` unless ``python=`` names
  another one), or shipped through ``runtime_env`` (``py_modules``, ``pip``, a container).
- A database every node can reach, passed in ``MEMFACTORY_DB_URL``: PostgreSQL for a real
  cluster; SQLite only when the head (where job drivers run) is this machine.
- ``MEMFACTORY_HOME`` (run folders, checkpoints, built models) on a path the nodes share:
  runs write their outputs where the submitting workspace expects them.

A job gets the environment of the Ray node that runs it, not the worker's: the executor
passes the workspace's allow-listed ``MEMFACTORY_*`` variables (see :mod:`jobs.run_env`: never
the workbench login) and the run's own (database URL, attempt,
heartbeat period); add others (``HF_HOME``, tokens) through ``runtime_env["env_vars"]``. The
runtime env is shown in the Ray dashboard: whoever can open it sees the database URL.

``address`` is the job server of the cluster, that is its dashboard address
(``http://HEAD:8265``), not the GCS port. Installing the ``ray`` extra
(``pip install -e '.[ray]'``) brings ``ray[default]``, which the submission client needs.

Stopping: ``terminate`` asks Ray to stop the job, which sends SIGTERM to the run process and
SIGKILL after ``stop_grace_s``. Ray's API has no forced stop, so ``kill`` asks again and the
job's own grace period bounds how long it can take.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.executor import RunHandle, run_command
from jobs.run_env import run_environment
from memfactory_core.config import key_env_allowed
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import memfactory_home

log = logging.getLogger(__name__)

INSTALL_HINT = "install the ray extra: pip install -e '.[ray]' (or pip install 'ray[default]')"
SIGTERM_EXIT = -15
SIGKILL_EXIT = -9
LOST_EXIT = 1
#: as ``jobs.entry.ATTEMPT_ENV`` (not imported: that module loads torch)
ATTEMPT_ENV = "MEMFACTORY_RUN_ATTEMPT"


def _client_class() -> type:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as err:
        raise MemFactoryError(f"the Ray backend needs Ray: {INSTALL_HINT} ({err})") from None
    return JobSubmissionClient


def job_server_url(address: str | None) -> str:
    """``HOST:PORT`` or a URL, as the job server URL (``http://`` by default); None reads
    ``$RAY_API_SERVER_ADDRESS`` or ``$RAY_ADDRESS`` as Ray's own job CLI does."""
    if address is None:
        address = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    address = (address or "").strip()
    if not address:
        raise MemFactoryError("the Ray backend needs --ray-address: the job server (dashboard) "
                              "address of the cluster's head, e.g. http://HEAD:8265")
    return address if "://" in address else f"http://{address}"


@dataclass
class JobState:
    """What the executor tracks about one job, kept in ``RunHandle.extra["ray"]``."""

    log_chars: int = 0
    last_log_sync: float = 0.0
    poll_error_since: float | None = None
    exit_code: int | None = None
    note: str | None = None
    killed: bool = False
    log_complete: bool = False


def job_state(handle: RunHandle) -> JobState:
    """The handle's job state (a fresh one for a handle rebuilt from the store: its first
    log sync appends the job's whole log)."""
    state = handle.extra.get("ray")
    if not isinstance(state, JobState):
        state = handle.extra["ray"] = JobState()
    return state


def _missing(err: Exception) -> bool:
    """Whether a client error says that the job does not exist on the cluster."""
    return isinstance(err, RuntimeError) and "does not exist" in str(err)


class RayExecutor:
    """Submits runs as Ray jobs and watches them through the job submission API."""

    name = "ray"

    def __init__(
        self,
        address: str | None,
        *,
        runtime_env: dict[str, Any] | None = None,
        python: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        stop_grace_s: float = 30.0,
        log_interval_s: float = 2.0,
        lost_after_s: float = 300.0,
        client: Any = None,
    ) -> None:
        """``address``: the job server URL (None: ``$RAY_API_SERVER_ADDRESS`` or
        ``$RAY_ADDRESS``). ``runtime_env``: a base for every job (its ``env_vars`` merged
        with the run's). ``python``: the interpreter of the entry point on the cluster.
        ``num_cpus``/``num_gpus``: resources reserved for the run process. A job the job
        server cannot be asked about for ``lost_after_s`` counts as failed."""
        self.address = job_server_url(address)
        self.runtime_env = copy.deepcopy(runtime_env or {})
        self.python = python
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.stop_grace_s = stop_grace_s
        self.log_interval_s = log_interval_s
        self.lost_after_s = lost_after_s
        if client is None:
            cls = _client_class()
            try:
                client = cls(self.address)
            except (ConnectionError, RuntimeError) as err:
                raise MemFactoryError(
                    f"cannot reach the Ray job server at {self.address} (give the dashboard "
                    f"address of the head, e.g. http://HEAD:8265): {err}") from None
        self.client = client

    # ------------------------------------------------------------------ launch
    def entrypoint(self, run_id: int) -> str:
        cmd = run_command(run_id)
        if self.python:
            cmd[0] = self.python
        return shlex.join(cmd)

    def job_runtime_env(self, env: dict[str, str]) -> dict[str, Any]:
        """The job's runtime env: a job inherits the environment of the Ray node, not this
        process's, so this workspace (``MEMFACTORY_HOME``, the allowed API-key variables and
        the other ``MEMFACTORY_*`` variables :mod:`jobs.run_env` lets through) is passed on,
        then ``runtime_env["env_vars"]``, then ``env``."""
        runtime_env = copy.deepcopy(self.runtime_env)
        env_vars = {
            # read by Ray's job supervisor: SIGKILL this long after SIGTERM
            "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, math.ceil(self.stop_grace_s))),
            "PYTHONUNBUFFERED": "1",
            "MEMFACTORY_HOME": str(memfactory_home()),
            **(runtime_env.get("env_vars") or {}),
            **env,
        }
        # only the allow-listed part of this process's environment (never the workbench
        # login or another secret): see jobs.run_env
        allowed = run_environment({}, {k: v for k, v in os.environ.items()
                                       if k.startswith("MEMFACTORY_") or key_env_allowed(k)})
        runtime_env["env_vars"] = {k: str(v) for k, v in {**allowed, **env_vars}.items()}
        return runtime_env

    def launch(self, run_id: int, env: dict[str, str], log_path: Path) -> RunHandle:
        """Submit the run as the job ``memfactory-run-<id>[-a<attempt>]-<random>`` (unique
        on the cluster, which may serve several workspaces); it is the handle's
        ``external_id``."""
        attempt = env.get(ATTEMPT_ENV)
        tag = f"-a{attempt}" if attempt and attempt.isdigit() else ""
        submission_id = f"memfactory-run-{run_id}{tag}-{uuid.uuid4().hex[:8]}"
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.submit_job(
                entrypoint=self.entrypoint(run_id),
                submission_id=submission_id,
                runtime_env=self.job_runtime_env(env),
                metadata={"memfactory_run_id": str(run_id)},
                entrypoint_num_cpus=self.num_cpus,
                entrypoint_num_gpus=self.num_gpus,
            )
        except Exception as err:
            raise MemFactoryError(
                f"run {run_id}: submitting it to the Ray cluster at {self.address} failed: "
                f"{err}") from None
        with log_path.open("a", encoding="utf-8") as f:
            f.write(f"[ray] run {run_id} submitted as job {submission_id} to {self.address}\n")
        return RunHandle(run_id=run_id, log_path=log_path, external_id=submission_id,
                         extra={"ray": JobState()})

    # ------------------------------------------------------------------- watch
    def poll(self, handle: RunHandle) -> int | None:
        """SUCCEEDED -> 0; FAILED -> the driver's exit code (1 when it never ran); STOPPED
        -> -15 (-9 after ``kill``); PENDING and RUNNING -> None. A job the cluster no longer
        knows, or cannot be asked about for ``lost_after_s``, -> 1."""
        state = job_state(handle)
        if state.exit_code is not None:
            return state.exit_code
        try:
            info = self.client.get_job_info(handle.external_id)
        except Exception as err:
            if _missing(err):
                return self._ended(state, LOST_EXIT, f"the Ray cluster lost the job: {err}")
            if state.poll_error_since is None:
                state.poll_error_since = time.time()
            if time.time() - state.poll_error_since >= self.lost_after_s:
                return self._ended(state, LOST_EXIT, f"no answer from the Ray job server at "
                                   f"{self.address} for {self.lost_after_s:.0f} s: {err}")
            log.warning("run %s: cannot ask Ray about job %s: %s", handle.run_id,
                        handle.external_id, err)
            return None
        state.poll_error_since = None
        status = str(info.status)
        if status == "SUCCEEDED":
            return self._ended(state, 0)
        if status == "STOPPED":
            return self._ended(state, SIGKILL_EXIT if state.killed else SIGTERM_EXIT)
        if status == "FAILED":
            code = info.driver_exit_code
            # a failure before the entry point ran (runtime env, scheduling) is only in Ray's
            # message, not in the driver log
            note = None if code else f"Ray job failed: {info.error_type}: {info.message}"
            return self._ended(state, code if code else LOST_EXIT, note)
        return None

    @staticmethod
    def _ended(state: JobState, code: int, note: str | None = None) -> int:
        state.exit_code, state.note = code, note
        return code

    def terminate(self, handle: RunHandle) -> None:
        """Ask Ray to stop the job: SIGTERM, then SIGKILL after ``stop_grace_s``."""
        self._stop(handle)

    def kill(self, handle: RunHandle) -> None:
        """Ray has no forced stop: ask again; the job dies within its grace period."""
        job_state(handle).killed = True
        self._stop(handle)

    def _stop(self, handle: RunHandle) -> None:
        try:
            self.client.stop_job(handle.external_id)
        except Exception as err:
            if not _missing(err):
                log.warning("run %s: cannot stop Ray job %s: %s", handle.run_id,
                            handle.external_id, err)

    # -------------------------------------------------------------------- logs
    def sync_logs(self, handle: RunHandle) -> None:
        """Append what the job printed since the last call to the run's log file.

        The job server returns whole logs (its tail endpoint is a websocket stream), so
        while the job runs this fetches at most every ``log_interval_s``; the file itself
        only grows. Once ``poll`` has seen the job end, one last fetch completes the log.
        """
        state = job_state(handle)
        ended = state.exit_code is not None
        if state.log_complete:
            return
        now = time.time()
        if not ended and now - state.last_log_sync < self.log_interval_s:
            return
        state.last_log_sync = now
        try:
            text: str = self.client.get_job_logs(handle.external_id)
        except Exception as err:
            if not _missing(err):
                log.warning("run %s: cannot fetch the logs of Ray job %s: %s", handle.run_id,
                            handle.external_id, err)
                return
            text = ""
        new = text[state.log_chars:] if len(text) >= state.log_chars else text
        if ended and state.note:
            new += ("" if not new or new.endswith("\n") else "\n") + f"[ray] {state.note}\n"
        if new:
            with Path(handle.log_path).open("a", encoding="utf-8") as f:
                f.write(new)
        state.log_chars = len(text)
        state.log_complete = ended
