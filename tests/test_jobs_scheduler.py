"""The scheduler and the run process: claims, reaping, recovery, cancel, GPU slots, and real
training/evaluation runs stopped, requeued, resumed and cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobs.local_executor import LocalExecutor
from jobs.models import FINAL_STATUSES
from jobs.scheduler import Scheduler, describe_exit, detect_gpus
from jobs.store import RunStore, host_name
from jobs.submit import submit_run
from memfactory_core.paths import ASSETS_DIR

REPO = ASSETS_DIR.parent
TINY_TRAIN = str(ASSETS_DIR / "configs" / "train_synthetic_tiny.yaml")
# small enough for a few steps a second on a shared CPU; many steps, so a test stops it
TINY_TRAIN_OVERRIDES = ["max_steps=500", "save_steps=1000", "num_generations=2",
                        "questions_per_step=1", "per_device_train_batch_size=8"]
HB = 0.5  # heartbeat period of these tests, seconds

T = TypeVar("T")

FAKE_ENTRY = textwrap.dedent('''
    """Stands in for jobs.entry: does to the store what a run process does, in milliseconds.
    The run's config says how it behaves: quick, sleep (until SIGTERM or cancel), stubborn
    (ignores SIGTERM), crash (exits 3 without a status)."""
    import json, os, signal, sqlite3, sys, time

    run_id, db, record = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    attempt = int(os.environ["MEMFACTORY_RUN_ATTEMPT"])
    period = float(os.environ["MEMFACTORY_HEARTBEAT_S"])
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    config = json.loads(con.execute("SELECT config FROM runs WHERE id=?", (run_id,)).fetchone()[0])
    mode = config.get("mode", "quick")
    with open(record, "a") as f:
        f.write(json.dumps({"run": run_id, "attempt": attempt, "pid": os.getpid(),
                            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\\n")
    print(f"fake run {run_id} attempt {attempt} ({mode})", flush=True)
    term = []
    signal.signal(signal.SIGTERM,
                  signal.SIG_IGN if mode == "stubborn" else (lambda *a: term.append(1)))
    MINE = "id=? AND attempts=? AND status IN ('starting', 'running')"

    def beat():
        con.execute(f"UPDATE runs SET heartbeat_at=? WHERE {MINE}", (time.time(), run_id, attempt))
        row = con.execute("SELECT cancel_requested_at FROM runs WHERE id=?", (run_id,)).fetchone()
        return row[0] is not None

    cancel = beat()
    last = time.monotonic()
    while mode in ("sleep", "stubborn") and not (mode == "sleep" and (term or cancel)):
        time.sleep(0.01)
        if time.monotonic() - last >= period:
            cancel, last = beat(), time.monotonic()
    cancel = cancel or beat()  # as the entry does: a SIGTERM may come before the beat sees it
    if mode == "crash":
        print("Traceback: something native broke", flush=True)
        sys.exit(3)
    con.execute("INSERT INTO metrics (run_id, step, name, value, time) VALUES (?, 1, 'reward',"
                " 1.0, ?)", (run_id, time.time()))
    status, error = ("cancelled", None) if cancel else (("failed", "interrupted") if term
                                                         else ("succeeded", None))
    con.execute(f"UPDATE runs SET status=?, error=?, finished_at=? WHERE {MINE}",
                (status, error, time.time(), run_id, attempt))
''')


def make_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace of this test's own (run folders are named by id, and every test's database
    starts at id 1), sharing the session's model cache."""
    shared_models = Path(os.environ["MEMFACTORY_HOME"]) / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "home"
    path.mkdir()
    (path / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("MEMFACTORY_HOME", str(path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return make_home(tmp_path, monkeypatch)


@pytest.fixture
def store(tmp_path: Path, home: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


@dataclass
class FakeRuns:
    """Launches :data:`FAKE_ENTRY` instead of ``jobs.entry`` and reads back its executions."""

    store: RunStore
    script: Path
    record: Path

    def command(self, run_id: int) -> list[str]:
        db = self.store.engine.url.database
        assert db is not None
        return [sys.executable, str(self.script), str(run_id), db, str(self.record)]

    def executor(self) -> LocalExecutor:
        return LocalExecutor(command=self.command)

    def executions(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def queue(self, mode: str = "quick", resumable: bool = False) -> int:
        return self.store.create_run("train", {"mode": mode}, resumable=resumable).id


@pytest.fixture
def fake(tmp_path: Path, store: RunStore) -> FakeRuns:
    script = tmp_path / "fake_entry.py"
    script.write_text(FAKE_ENTRY)
    return FakeRuns(store, script, tmp_path / "executions.jsonl")


@pytest.fixture
def schedulers() -> Iterator[list[Scheduler]]:
    """Schedulers a test makes; their runs are stopped at the end whatever happens."""
    made: list[Scheduler] = []
    yield made
    for s in made:
        s.grace_s = min(s.grace_s, 5.0)
        s.stop(terminate_runs=True)


def wait_for(condition: Callable[[], T], timeout: float, every: Callable[[], object] | None
             = None, interval: float = 0.02) -> T:
    """Call ``every`` (a scheduler tick) and poll ``condition`` until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        if every is not None:
            every()
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def status(store: RunStore, run_id: int) -> str:
    return store.get_run(run_id).status


def is_final(store: RunStore, run_id: int) -> bool:
    return status(store, run_id) in FINAL_STATUSES


# ------------------------------------------------------------------------- claims
def test_claims_from_threads_are_unique(store: RunStore) -> None:
    ids = [store.create_run("eval", {}).id for _ in range(120)]
    claimed: list[int] = []
    barrier = threading.Barrier(6)

    def claim(worker: str) -> None:
        own = RunStore(url=store.url)
        barrier.wait()
        while (run := own.claim_next(worker)) is not None:
            claimed.append(run.id)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids  # every run claimed, none twice
    assert {r.status for r in store.list_runs()} == {"starting"}


def test_claims_from_processes_are_unique(store: RunStore, tmp_path: Path) -> None:
    ids = [store.create_run("eval", {}).id for _ in range(80)]
    code = textwrap.dedent("""
        import json, pathlib, sys, time
        from jobs.store import RunStore
        store = RunStore(url=sys.argv[1], migrate=False)
        ready = pathlib.Path(sys.argv[2])
        (ready / sys.argv[3]).touch()
        while len(list(ready.iterdir())) < 4:  # all four claim together
            time.sleep(0.001)
        got = []
        while (run := store.claim_next(sys.argv[3])) is not None:
            got.append(run.id)
        print(json.dumps(got))
    """)
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", code, store.url, str(ready), f"p{i}"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True) for i in range(4)]
    claimed = [i for p in procs for i in json.loads(p.communicate(timeout=120)[0])]
    assert sorted(claimed) == ids
    workers = {r.worker for r in store.list_runs()}
    assert len(workers) >= 2  # they really competed


@pytest.mark.slow
def test_two_schedulers_run_200_quick_runs_each_exactly_once(
        store: RunStore, fake: FakeRuns, schedulers: list[Scheduler]) -> None:
    ids = [fake.queue() for _ in range(200)]
    stop = threading.Event()
    for name in ("a", "b"):
        s = Scheduler(store, fake.executor(), max_concurrent=4, gpus=[], poll_s=0.01,
                      heartbeat_s=HB, worker_id=f"{host_name()}:{os.getpid()}:{name}")
        schedulers.append(s)
    threads = [threading.Thread(target=s.run_forever, args=(stop,)) for s in schedulers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(store.list_runs(status=FINAL_STATUSES)) == 200, timeout=300,
                 interval=0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    executed = sorted(e["run"] for e in fake.executions())
    assert executed == ids  # none lost, none run twice
    runs = store.list_runs()
    assert {r.status for r in runs} == {"succeeded"}
    assert {r.attempts for r in runs} == {1}
    assert len({r.worker for r in runs}) == 2  # both schedulers took a share
    assert set(store.best_metric(ids).values()) == {1.0}  # each wrote its metric


# ----------------------------------------------------------------- process deaths
def test_sigkill_of_a_run_process_fails_it_with_its_log(
        store: RunStore, fake: FakeRuns, schedulers: list[Scheduler]) -> None:
    s = Scheduler(store, fake.executor(), gpus=[], poll_s=0.05, heartbeat_s=HB)
    schedulers.append(s)
    run_id = fake.queue("sleep")
    run = wait_for(lambda: (r := store.get_run(run_id)).status == "running" and r, 10, s.tick)
    wait_for(lambda: "fake run" in Path(run.log_path or "").read_text(), 10)
    os.kill(run.pid, signal.SIGKILL)
    # noticed at the next reap (bench/scheduler_latency.py measures how soon)
    wait_for(lambda: is_final(store, run_id), 60, s.tick)
    run = store.get_run(run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error.startswith("run process killed by SIGKILL")
    assert "fake run" in run.error  # the end of its log comes with the error
    log = Path(run.log_path or "").read_text()
    assert "fake run 1 attempt 1" in log and "run process killed by SIGKILL" in log


def test_a_crashing_run_fails_with_its_exit_code_and_log(
        store: RunStore, fake: FakeRuns, schedulers: list[Scheduler]) -> None:
    s = Scheduler(store, fake.executor(), gpus=[], poll_s=0.02, heartbeat_s=HB)
    schedulers.append(s)
    run_id = fake.queue("crash")
    wait_for(lambda: is_final(store, run_id), 20, s.tick)
    run = store.get_run(run_id)
    assert run.status == "failed" and run.error is not None
    assert run.error.startswith("run process exited with code 3")
    assert "something native broke" in run.error
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(1) == "exited with code 1"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recovery_settles_runs_whose_worker_is_gone(store: RunStore, fake: FakeRuns) -> None:
    here, now = host_name(), time.time()
    gone = f"{here}:{_dead_pid()}:old"
    alive_worker = f"{here}:{os.getpid()}:other"

    def active(resumable: bool = False, **fields: Any) -> int:
        run = store.create_run("train", {"mode": "sleep"}, resumable=resumable)
        values = {"status": "running", "host": here, "worker": gone, "pid": _dead_pid(),
                  "attempts": 1, "started_at": now - 5, "heartbeat_at": now}
        values.update(fields)
        store.update_run(run.id, **values)
        return run.id

    lost = active()
    requeued = active(resumable=True)
    exhausted = active(resumable=True, attempts=2)
    cancelled = active(cancel_requested_at=now)
    silent = active(host="elsewhere", heartbeat_at=now - 10)
    starting = active(status="starting", pid=None, heartbeat_at=now - 10)
    alive_process = active(pid=os.getpid(), started_at=now)
    watched = active(worker=alive_worker)
    beating = active(host="elsewhere", heartbeat_at=now)
    s = Scheduler(store, fake.executor(), gpus=[], heartbeat_s=HB, max_attempts=2)

    settled = s.recover()
    assert sorted(settled) == sorted([lost, requeued, exhausted, cancelled, silent, starting])
    for run_id in (lost, exhausted, silent, starting):
        run = store.get_run(run_id)
        assert run.status == "failed" and (run.error or "").startswith("worker lost"), run_id
    assert "no heartbeat" in (store.get_run(silent).error or "")
    run = store.get_run(requeued)
    assert run.status == "queued" and "resumes from its last checkpoint" in (run.error or "")
    assert status(store, cancelled) == "cancelled"
    for run_id in (alive_process, watched, beating):
        assert status(store, run_id) == "running"
    assert "worker lost" in Path(store.get_run(lost).log_path or "").read_text()
    assert s.recover() == []  # settled once


# ------------------------------------------------------------------------- cancel
def test_cancel_queued_running_and_stubborn_runs(
        store: RunStore, fake: FakeRuns, schedulers: list[Scheduler]) -> None:
    queued = fake.queue("sleep")
    assert store.request_cancel(queued) == "cancelled"
    running, stubborn = fake.queue("sleep"), fake.queue("stubborn")
    s = Scheduler(store, fake.executor(), max_concurrent=2, gpus=[], poll_s=0.02,
                  heartbeat_s=HB, grace_s=4.0)
    schedulers.append(s)
    wait_for(lambda: {status(store, running), status(store, stubborn)} == {"running"}, 10,
             s.tick)
    wait_for(lambda: len(fake.executions()) == 2, 10)
    assert store.request_cancel(running) == "running"
    assert store.request_cancel(stubborn) == "running"
    t0 = time.monotonic()
    wait_for(lambda: is_final(store, running), 60, s.tick)
    # SIGTERM at once: it stopped by itself, well before the grace period's SIGKILL
    # (bench/scheduler_latency.py measures how soon)
    assert status(store, running) == "cancelled"
    assert "SIGKILL" not in (store.get_run(running).error or "")
    assert "SIGKILL" not in Path(store.get_run(running).log_path or "").read_text()
    wait_for(lambda: is_final(store, stubborn), 60, s.tick)
    assert time.monotonic() - t0 >= 4.0  # killed only after the grace period
    run = store.get_run(stubborn)
    assert run.status == "cancelled" and "killed by SIGKILL" in (run.error or "")
    assert status(store, queued) == "cancelled"
    assert queued not in {e["run"] for e in fake.executions()}  # never started


def test_stopping_a_scheduler_settles_its_runs(
        store: RunStore, fake: FakeRuns) -> None:
    plain = fake.queue("sleep")
    stubborn = fake.queue("stubborn", resumable=True)
    s = Scheduler(store, fake.executor(), max_concurrent=2, gpus=[], poll_s=0.02,
                  heartbeat_s=HB, grace_s=0.5)
    s.start()
    wait_for(lambda: {status(store, plain), status(store, stubborn)} == {"running"}, 10)
    wait_for(lambda: len(fake.executions()) == 2, 10)
    s.stop(terminate_runs=True)
    assert s.active_runs == []
    run = store.get_run(plain)  # a SIGTERM without a cancel: the run says it was interrupted
    assert (run.status, run.error) == ("failed", "interrupted")
    run = store.get_run(stubborn)  # killed after the grace period; resumable: back in the queue
    assert run.status == "queued" and "worker stopped" in (run.error or "")


# ------------------------------------------------------------------------- GPUs
def test_each_run_gets_its_own_gpu_and_cpu_runs_get_none(
        store: RunStore, fake: FakeRuns, schedulers: list[Scheduler],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = fake.queue("sleep"), fake.queue("sleep"), fake.queue("sleep")
    s = Scheduler(store, fake.executor(), max_concurrent=4, gpus=["0", "1"], poll_s=0.02,
                  heartbeat_s=HB)
    schedulers.append(s)
    wait_for(lambda: len(fake.executions()) == 2, 10, s.tick)
    assert sorted(e["gpus"] for e in fake.executions()) == ["0", "1"]
    assert status(store, c) == "queued"  # no free GPU for it
    assert sorted(store.get_run(i).gpus or "" for i in (a, b)) == ["0", "1"]
    freed = store.get_run(a).gpus
    store.request_cancel(a)
    wait_for(lambda: len(fake.executions()) == 3, 10, s.tick)
    assert fake.executions()[-1]["gpus"] == freed
    store.request_cancel(b)
    store.request_cancel(c)
    wait_for(lambda: all(is_final(store, i) for i in (a, b, c)), 10, s.tick)

    cpu = Scheduler(store, fake.executor(), gpus=[], poll_s=0.02, heartbeat_s=HB)
    schedulers.append(cpu)
    d = fake.queue("quick")
    wait_for(lambda: is_final(store, d), 10, cpu.tick)
    assert fake.executions()[-1]["gpus"] is None and cpu.max_concurrent == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert detect_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []


# ---------------------------------------------------------------- the run process
def _entry(run_id: int, store: RunStore, attempt: int) -> subprocess.Popen[str]:
    env = {**os.environ, "MEMFACTORY_DB_URL": store.url, "MEMFACTORY_HEARTBEAT_S": str(HB),
           "MEMFACTORY_RUN_ATTEMPT": str(attempt), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "jobs.entry", str(run_id)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_an_invalid_run_config_fails_with_a_clear_message(store: RunStore) -> None:
    run = store.create_run("train", {"model": "tiny-random", "max_stepz": 3}, resumable=True)
    claimed = store.claim_next("w")
    assert claimed is not None
    proc = _entry(run.id, store, claimed.attempts)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, out
    run = store.get_run(run.id)
    assert run.status == "failed" and run.error is not None
    assert f"run {run.id} config: invalid TrainConfig" in run.error
    assert "max_stepz: Extra inputs are not permitted" in run.error
    assert "Traceback" not in run.error  # a user error is a message, not a traceback
    assert "max_stepz" in out and "failed" in out


@pytest.mark.slow
def test_training_stopped_by_its_worker_resumes_then_cancels_with_a_checkpoint(
        store: RunStore, schedulers: list[Scheduler]) -> None:
    run = submit_run(store, "train", TINY_TRAIN, TINY_TRAIN_OVERRIDES, base_dir=REPO)
    first = Scheduler(store, gpus=[], poll_s=0.1, heartbeat_s=HB, grace_s=120)
    first.start()
    schedulers.append(first)
    wait_for(lambda: "reward" in store.metric_names(run.id), 240, interval=0.2)
    # the worker shuts down: SIGTERM without a cancel -> checkpoint, back in the queue
    first.stop(terminate_runs=True)
    stopped = store.get_run(run.id)
    assert stopped.status == "queued", stopped.error
    assert "resumes from its last checkpoint" in (stopped.error or "")
    checkpoints = [a for a in store.artifacts(run.id) if a.kind == "checkpoint"]
    assert checkpoints and Path(checkpoints[-1].path).is_dir()
    resumed_from = checkpoints[-1].step
    assert resumed_from is not None and resumed_from < 500

    second = Scheduler(store, gpus=[], poll_s=0.1, heartbeat_s=HB, grace_s=120)
    schedulers.append(second)
    log = Path(stopped.log_path or "")
    wait_for(lambda: f"step {resumed_from + 1}/500" in log.read_text(), 240, second.tick,
             interval=0.1)
    assert f"resuming from {checkpoints[-1].path}" in log.read_text()
    assert store.get_run(run.id).attempts == 2
    store.request_cancel(run.id)
    wait_for(lambda: is_final(store, run.id), 120, second.tick, interval=0.1)
    done = store.get_run(run.id)
    assert done.status == "cancelled", done.error
    assert done.summary["stopped"] and done.summary["steps"] > resumed_from
    last = [a for a in store.artifacts(run.id) if a.kind == "checkpoint"][-1]
    assert last.step == done.summary["steps"] and Path(last.path).is_dir()
    steps, _ = store.metrics(run.id)[run.id]["reward"]
    assert steps == list(range(1, done.summary["steps"] + 1))  # no step lost or repeated
    assert "cancel requested" in log.read_text()


@pytest.mark.slow
def test_evaluation_ends_promptly_on_cancel_and_fails_when_interrupted(
        store: RunStore, schedulers: list[Scheduler]) -> None:
    overrides = ["data.limit=30", "data.docs=50", "batch_size=2"]
    config = str(ASSETS_DIR / "configs" / "eval_memagent_tiny.yaml")
    cancelled = submit_run(store, "eval", config, overrides, base_dir=REPO)
    interrupted = submit_run(store, "eval", config, overrides, base_dir=REPO)
    s = Scheduler(store, gpus=[], poll_s=0.1, heartbeat_s=HB, grace_s=60)
    schedulers.append(s)
    log = Path(cancelled.log_path or "")
    wait_for(lambda: log.exists() and "evaluating" in log.read_text(), 120, s.tick)
    time.sleep(1.0)
    store.request_cancel(cancelled.id)
    wait_for(lambda: is_final(store, cancelled.id), 120, s.tick)
    assert "evaluated 30/30" not in log.read_text()  # it does not finish the 30 questions first
    assert status(store, cancelled.id) == "cancelled"

    log = Path(interrupted.log_path or "")
    wait_for(lambda: log.exists() and "evaluating" in log.read_text(), 120, s.tick)
    s.stop(terminate_runs=True)
    run = store.get_run(interrupted.id)
    assert (run.status, run.error) == ("failed", "interrupted")


@pytest.mark.slow
def test_a_run_process_whose_run_was_taken_over_exits(store: RunStore) -> None:
    config = str(ASSETS_DIR / "configs" / "eval_memagent_tiny.yaml")
    run = submit_run(store, "eval", config, ["data.limit=30"], base_dir=REPO)
    first = store.claim_next("w1")
    assert first is not None
    claimed_at = store.get_run(run.id).heartbeat_at or 0
    proc = _entry(run.id, store, first.attempts)
    wait_for(lambda: (store.get_run(run.id).heartbeat_at or 0) > claimed_at, 60)  # it beats
    # another worker declared it lost and claimed it again
    assert store.requeue(run.id, "worker lost")
    second = store.claim_next("w2")
    assert second is not None and second.attempts == 2
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 3, out
    assert "was taken over" in out
    again = store.get_run(run.id)
    assert (again.status, again.worker, again.attempts) == ("starting", "w2", 2)
