"""The Ray backend: status and exit-code mapping against a scripted job client, then real
runs on a local Ray head that the module starts on loopback and stops at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from jobs.executor import RunHandle
from jobs.ray_executor import RayExecutor, job_server_url
from jobs.store import RunStore
from jobs.submit import submit_run
from memfactory_core.errors import MemFactoryError

TINY_EVAL = "assets/configs/eval_memagent_tiny.yaml"
RUN_TIMEOUT_S = 240.0


# ----------------------------------------------------------------- scripted client
class ScriptedClient:
    """The part of ``JobSubmissionClient`` the executor uses, with scripted answers."""

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.stopped: list[str] = []
        self.info: dict[str, Any] = {}
        self.logs: dict[str, str] = {}
        self.error: Exception | None = None

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs)
        self.info[kwargs["submission_id"]] = SimpleNamespace(
            status="PENDING", driver_exit_code=None, error_type=None, message="")
        return kwargs["submission_id"]

    def get_job_info(self, job_id: str) -> Any:
        if self.error is not None:
            raise self.error
        if job_id not in self.info:
            raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not "
                               "exist.")
        return self.info[job_id]

    def get_job_logs(self, job_id: str) -> str:
        return self.logs.get(job_id, "")

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        return True

    def set(self, job_id: str, status: str, code: int | None = None, **kw: Any) -> None:
        self.info[job_id] = SimpleNamespace(status=status, driver_exit_code=code,
                                            error_type=kw.get("error_type"),
                                            message=kw.get("message", ""))


@pytest.fixture
def scripted() -> tuple[RayExecutor, ScriptedClient]:
    client = ScriptedClient()
    return RayExecutor("127.0.0.1:8265", client=client, log_interval_s=0.0,
                       stop_grace_s=12.5), client


def test_launch_submits_the_entry_point_with_the_run_env(
        scripted: tuple[RayExecutor, ScriptedClient], tmp_path: Path) -> None:
    ex, client = scripted
    handle = ex.launch(7, {"MEMFACTORY_DB_URL": "sqlite:///x.db"}, tmp_path / "r" / "run.log")
    (job,) = client.submitted
    assert handle.external_id == job["submission_id"]
    assert job["submission_id"].startswith("memfactory-run-7-")
    assert job["entrypoint"] == f"{sys.executable} -m jobs.entry 7"
    env = job["runtime_env"]["env_vars"]
    assert env["MEMFACTORY_DB_URL"] == "sqlite:///x.db"
    assert env["RAY_JOB_STOP_WAIT_TIME_S"] == "13"
    assert env["MEMFACTORY_HOME"] == os.environ["MEMFACTORY_HOME"], "the workspace follows"
    assert job["metadata"] == {"memfactory_run_id": "7"}
    assert ex.address == "http://127.0.0.1:8265"
    assert "submitted as job" in handle.log_path.read_text()
    again = ex.launch(7, {"MEMFACTORY_RUN_ATTEMPT": "2"}, tmp_path / "r" / "run.log")
    assert again.external_id is not None and again.external_id.startswith("memfactory-run-7-a2-")


def test_poll_maps_job_states_to_exit_codes(
        scripted: tuple[RayExecutor, ScriptedClient], tmp_path: Path) -> None:
    ex, client = scripted
    cases: list[tuple[str, int | None, int | None]] = [
        ("PENDING", None, None), ("RUNNING", None, None), ("SUCCEEDED", 0, 0),
        ("FAILED", 3, 3), ("FAILED", -9, -9), ("STOPPED", None, -15)]
    for status, driver_code, expected in cases:
        handle = ex.launch(1, {}, tmp_path / "run.log")
        client.set(handle.external_id, status, driver_code)
        assert ex.poll(handle) == expected, status
    handle = ex.launch(1, {}, tmp_path / "run.log")
    ex.kill(handle)
    assert client.stopped == [handle.external_id]
    client.set(handle.external_id, "STOPPED")
    assert ex.poll(handle) == -9
    client.set(handle.external_id, "RUNNING")
    assert ex.poll(handle) == -9, "an ended job keeps its exit code"


def test_failures_outside_the_run_process_reach_the_log(
        scripted: tuple[RayExecutor, ScriptedClient], tmp_path: Path) -> None:
    ex, client = scripted
    handle = ex.launch(2, {}, tmp_path / "run.log")
    client.set(handle.external_id, "FAILED", None, error_type="RUNTIME_ENV_SETUP_FAILURE",
               message="pip failed")
    assert ex.poll(handle) == 1
    ex.sync_logs(handle)
    assert "RUNTIME_ENV_SETUP_FAILURE: pip failed" in handle.log_path.read_text()
    lost = RunHandle(run_id=3, log_path=tmp_path / "lost.log", external_id="gone")
    assert ex.poll(lost) == 1
    ex.sync_logs(lost)
    assert "lost the job" in lost.log_path.read_text()


def test_unreachable_job_server_fails_the_run_only_after_a_while(
        scripted: tuple[RayExecutor, ScriptedClient], tmp_path: Path) -> None:
    ex, client = scripted
    handle = ex.launch(4, {}, tmp_path / "run.log")
    client.error = ConnectionError("refused")
    assert ex.poll(handle) is None
    ex.lost_after_s = 0.0
    assert ex.poll(handle) == 1


def test_sync_logs_appends_only_what_is_new(
        scripted: tuple[RayExecutor, ScriptedClient], tmp_path: Path) -> None:
    ex, client = scripted
    log_path = tmp_path / "run.log"
    log_path.write_text("earlier attempt\n")
    handle = ex.launch(5, {}, log_path)
    sid = handle.external_id
    assert sid is not None
    client.logs[sid] = "one\n"
    ex.sync_logs(handle)
    client.logs[sid] = "one\ntwo\n"
    ex.sync_logs(handle)
    ex.sync_logs(handle)
    client.set(sid, "SUCCEEDED", 0)
    client.logs[sid] = "one\ntwo\nthree\n"
    assert ex.poll(handle) == 0
    ex.sync_logs(handle)
    client.logs[sid] = "one\ntwo\nthree\nlater\n"
    ex.sync_logs(handle)
    lines = log_path.read_text().splitlines()
    assert lines[0] == "earlier attempt" and lines[1].startswith("[ray] run 5 submitted")
    assert lines[2:] == ["one", "two", "three"]


def test_log_fetches_are_rate_limited_while_running(tmp_path: Path) -> None:
    client = ScriptedClient()
    ex = RayExecutor("http://h:8265", client=client, log_interval_s=3600.0)
    handle = ex.launch(6, {}, tmp_path / "run.log")
    sid = handle.external_id
    assert sid is not None
    client.logs[sid] = "a\n"
    ex.sync_logs(handle)
    client.logs[sid] = "a\nb\n"
    ex.sync_logs(handle)
    assert handle.log_path.read_text().endswith("a\n")
    client.set(sid, "SUCCEEDED", 0)
    ex.poll(handle)
    ex.sync_logs(handle)
    assert handle.log_path.read_text().endswith("a\nb\n")


def test_missing_ray_and_bad_address_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MemFactoryError, match="ray-address"):
        job_server_url(" ")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:8265")
    assert job_server_url(None) == "http://10.0.0.1:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(MemFactoryError, match="ray-address"):
        job_server_url(None)
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)
    with pytest.raises(MemFactoryError, match=r"pip install -e '\.\[ray\]'"):
        RayExecutor("http://127.0.0.1:8265")


# ------------------------------------------------------------------ local Ray head
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_processes(temp_dir: str, gcs_port: int) -> list[psutil.Process]:
    """The processes of the head started under ``temp_dir``, with their descendants."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if temp_dir in cmd or (f":{gcs_port} " in f"{cmd} " and "ray" in cmd):
            found[p.pid] = p
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in p.children(recursive=True)})
    found.pop(os.getpid(), None)
    return list(found.values())


def _stop_head(temp_dir: str, gcs_port: int) -> None:
    """SIGTERM, then SIGKILL after 3 s (the GCS and raylet ignore SIGTERM for long)."""
    procs = _head_processes(temp_dir, gcs_port)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A one-CPU Ray head on loopback; yields its job server URL."""
    pytest.importorskip("ray.job_submission",
                        reason="ray is not installed (pip install -e '.[ray]')")
    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.exists():
        pytest.skip(f"no ray command next to {sys.executable}")
    # Ray's socket paths must stay short: not under pytest's deep tmp folders
    temp_dir = tempfile.mkdtemp(prefix="mfray", dir="/tmp")
    gcs_port, dash_port = _free_port(), _free_port()
    extra_ports = {flag: _free_port() for flag in (
        "--ray-client-server-port", "--dashboard-agent-listen-port", "--metrics-export-port")}
    cmd = [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash_port), "--num-cpus", "1",
           "--object-store-memory", str(100 * 2**20), "--include-dashboard", "true",
           "--disable-usage-stats", "--temp-dir", temp_dir]
    for flag, port in extra_ports.items():
        cmd += [flag, str(port)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    url = f"http://127.0.0.1:{dash_port}"
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=temp_dir, env=env, capture_output=True, text=True,
                              timeout=180)
        if proc.returncode != 0:
            pytest.fail(f"ray start failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        _wait_for(lambda: _job_server_up(url), 60, "the Ray job server")
        print(f"\nRay head ready in {time.monotonic() - t0:.1f} s at {url}", file=sys.stderr)
        yield url
    finally:
        _stop_head(temp_dir, gcs_port)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_server_up(url: str) -> bool:
    try:
        RayExecutor(url)
    except MemFactoryError:
        return False
    return True


def _wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> tuple[RunStore, dict[str, str]]:
    """A store of its own and the env a run process needs to reach it."""
    home = tmp_path / "home"
    monkeypatch.setenv("MEMFACTORY_HOME", str(home))
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    env = {"MEMFACTORY_DB_URL": store.url, "MEMFACTORY_HOME": str(home),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return store, env


@pytest.mark.slow
def test_a_real_run_succeeds_with_its_log_and_metrics(
        ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, env = _workspace(tmp_path, monkeypatch)
    run = submit_run(store, "eval", TINY_EVAL, ["data.limit=2"], backend="ray")
    claimed = store.claim_next("test-ray-worker")
    assert claimed is not None and claimed.id == run.id
    ex = RayExecutor(ray_head, log_interval_s=1.0)
    assert run.log_path is not None
    handle = ex.launch(run.id, env, Path(run.log_path))
    assert store.mark_running(run.id, external_id=handle.external_id)

    def ended() -> int | None:
        code = ex.poll(handle)
        ex.sync_logs(handle)
        return None if code is None else code + 1000  # 0 is falsy

    t0 = time.monotonic()
    code = _wait_for(ended, RUN_TIMEOUT_S, "the run to end") - 1000
    print(f"\nreal eval run on Ray: {time.monotonic() - t0:.1f} s", file=sys.stderr)
    text = Path(run.log_path).read_text()
    assert code == 0, text[-3000:]
    done = store.get_run(run.id)
    assert done.status == "succeeded", (done.error, text[-3000:])
    assert done.external_id == handle.external_id
    assert f"[ray] run {run.id} submitted as job {handle.external_id}" in text
    assert f"Running entrypoint for job {handle.external_id}" in text
    assert f"run {run.id}: succeeded" in text, "the run process's own output is mirrored"
    assert store.last_metrics(run.id), "the run wrote no metrics to the store"


@pytest.mark.slow
def test_terminate_stops_a_running_job(
        ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, env = _workspace(tmp_path, monkeypatch)
    run = submit_run(store, "eval", TINY_EVAL, ["data.limit=2"], backend="ray")
    assert store.claim_next("test-ray-worker") is not None
    ex = RayExecutor(ray_head, stop_grace_s=5, log_interval_s=0.5)
    assert run.log_path is not None
    handle = ex.launch(run.id, env, Path(run.log_path))
    store.mark_running(run.id, external_id=handle.external_id)
    started = f"run {run.id} (eval) attempt"

    def running() -> bool:
        ex.sync_logs(handle)
        return started in Path(handle.log_path).read_text()

    _wait_for(running, 120, "the run process to start")  # its SIGTERM handler is installed
    t0 = time.monotonic()
    ex.terminate(handle)
    code = _wait_for(lambda: ex.poll(handle), 30, "the job to stop", every=0.2)
    print(f"\nRay job stopped {time.monotonic() - t0:.1f} s after terminate", file=sys.stderr)
    ex.sync_logs(handle)
    text = Path(handle.log_path).read_text()
    assert code == -15, text[-3000:]
    assert str(ex.client.get_job_status(handle.external_id)) == "STOPPED"
    done = store.get_run(run.id)
    # the run process stopped gracefully: an evaluation interrupted without a cancel fails
    assert (done.status, done.error) == ("failed", "interrupted"), text[-3000:]
    assert "interrupted" in text


@pytest.mark.slow
def test_a_scheduler_with_the_ray_executor_runs_a_queued_run(
        ray_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.scheduler import Scheduler

    store, _ = _workspace(tmp_path, monkeypatch)
    run = submit_run(store, "eval", TINY_EVAL, ["data.limit=2"], backend="ray")
    ex = RayExecutor(ray_head, log_interval_s=1.0)
    scheduler = Scheduler(store, executor=ex, max_concurrent=1, gpus=[], poll_s=0.5,
                          heartbeat_s=2.0)

    def finished() -> bool:
        scheduler.tick()
        return store.get_run(run.id).status in ("succeeded", "failed", "cancelled")

    t0 = time.monotonic()
    try:
        _wait_for(finished, RUN_TIMEOUT_S, "the scheduler to finish the run")
    finally:
        scheduler.stop()
    print(f"\nqueued run through the scheduler on Ray: {time.monotonic() - t0:.1f} s",
          file=sys.stderr)
    assert run.log_path is not None
    text = Path(run.log_path).read_text()
    done = store.get_run(run.id)
    assert done.status == "succeeded", (done.error, text[-3000:])
    assert done.backend == "ray" and done.external_id
    assert done.external_id.startswith(f"memfactory-run-{run.id}-a1-")
    assert scheduler.active_runs == []
    assert "attempt 1 claimed by" in text and f"run {run.id}: succeeded" in text
    assert store.last_metrics(run.id)
