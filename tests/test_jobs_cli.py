"""``memfactory worker``, ``submit`` and ``runs ...`` as a user runs them: output, exit codes,
clear errors, and a worker executing, surviving and recovering real runs."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.models import FINAL_STATUSES
from jobs.store import MetricRow, RunStore, pid_alive
from tests.test_jobs_scheduler import (
    HB,
    REPO,
    TINY_TRAIN,
    TINY_TRAIN_OVERRIDES,
    make_home,
    wait_for,
)


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    """The test's own store and workspace, also the ones the command line and its
    subprocesses use."""
    make_home(tmp_path, monkeypatch)
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    monkeypatch.setenv("MEMFACTORY_DB_URL", store.url)
    monkeypatch.setenv("MEMFACTORY_HEARTBEAT_S", str(HB))
    return store


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``memfactory ARGS`` in this process: (exit code, stdout, stderr)."""
    from app.cli import main

    argv = sys.argv
    sys.argv = ["memfactory", *args]
    code: Any = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err


def one_line(text: str) -> str:
    """Console output with its line wrapping undone."""
    return " ".join(text.split())


# ------------------------------------------------------------------ fast commands
def test_submit_prints_only_the_run_id_and_runs_list_and_show_it(
        db: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "submit", "train", TINY_TRAIN, "max_steps=3", "--name", "tiny",
                       "--tag", "a", "--tag", "b", "--notes", "first try")
    assert code == 0 and out.strip().isdigit()
    run_id = int(out)
    code, out, _ = cli(capsys, "runs", "list", "--json")
    [row] = json.loads(out)
    assert (row["id"], row["kind"], row["status"], row["name"]) == (run_id, "train", "queued",
                                                                    "tiny")
    assert (row["model"], row["pipeline"], row["best_reward"]) == ("tiny-random", "memagent",
                                                                    None)
    code, out, _ = cli(capsys, "runs", "show", str(run_id), "--json")
    shown = json.loads(out)
    assert shown["config"]["max_steps"] == 3 and shown["tags"] == ["a", "b"]
    assert shown["notes"] == "first try" and shown["resumable"] is True
    assert shown["config"]["output_dir"] == shown["output_dir"]
    code, out, _ = cli(capsys, "runs", "list")
    assert code == 0 and "tiny" in out and "queued" in out
    code, out, _ = cli(capsys, "runs", "list", "--json", "--status", "running")
    assert json.loads(out) == []
    code, out, _ = cli(capsys, "runs", "show", str(run_id))
    assert code == 0 and "status: queued" in out


def test_cancel_a_queued_run(db: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    run = db.create_run("eval", {})
    code, out, _ = cli(capsys, "runs", "cancel", str(run.id))
    assert code == 0 and f"run {run.id} cancelled" in out
    assert db.get_run(run.id).status == "cancelled"
    code, out, _ = cli(capsys, "runs", "cancel", str(run.id))
    assert code == 0 and "already ended: cancelled" in out
    active = db.create_run("eval", {})
    db.claim_next("w")
    code, out, _ = cli(capsys, "runs", "cancel", str(active.id))
    assert "cancel requested" in out and db.get_run(active.id).cancel_requested_at


def test_logs_tail_and_follow_until_the_run_ends(
        db: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    run = db.create_run("eval", {})
    log = Path(run.log_path or "")
    code, _, err = cli(capsys, "runs", "logs", str(run.id))
    assert code == 0 and "has no log yet" in err
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(1, 6)))
    code, out, _ = cli(capsys, "runs", "logs", str(run.id), "--tail", "2")
    assert out == "line 4\nline 5\n"
    db.claim_next("w")

    def finish_later() -> None:
        time.sleep(0.5)
        with log.open("a") as f:
            f.write("last words\n")
        db.finish(run.id, "succeeded")

    threading.Thread(target=finish_later).start()
    t0 = time.monotonic()
    code, out, _ = cli(capsys, "runs", "logs", str(run.id), "--follow", "--interval", "0.05")
    assert code == 0 and out.endswith("line 5\nlast words\n")
    assert time.monotonic() - t0 < 60  # it ends with the run


def test_export_writes_config_metrics_samples_artifacts(
        db: RunStore, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = db.create_run("train", {"model": "tiny-random", "max_steps": 2}, name="x")
    db.add_metrics(run.id, [MetricRow(1, "reward", 0.1, 1.0), MetricRow(1, "loss", 2.0, 1.0),
                            MetricRow(2, "reward", 0.3, 2.0)])
    db.add_samples(run.id, [{"step": 1, "prediction": "a"}], kind="trajectory")
    ckpt = tmp_path / "out" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    results = tmp_path / "out" / "results.json"
    results.write_text("{}")
    db.add_artifact(run.id, "checkpoint", ckpt, step=2)
    db.add_artifact(run.id, "results", results)
    db.add_artifact(run.id, "checkpoint", tmp_path / "pruned", step=1)
    Path(run.log_path or "").parent.mkdir(parents=True)
    Path(run.log_path or "").write_text("hello\n")
    out_dir = tmp_path / "export"
    code, out, _ = cli(capsys, "runs", "export", str(run.id), "--output", str(out_dir))
    assert code == 0 and out.strip() == str(out_dir)
    assert "max_steps: 2" in (out_dir / "config.yaml").read_text()
    rows = list(csv.reader((out_dir / "metrics.csv").open()))
    assert rows == [["step", "loss", "reward"], ["1", "2.0", "0.1"], ["2", "", "0.3"]]
    [sample] = [json.loads(x) for x in (out_dir / "samples.jsonl").read_text().splitlines()]
    assert sample == {"step": 1, "kind": "trajectory", "data": {"step": 1, "prediction": "a"}}
    assert (out_dir / "artifacts" / "checkpoint-2" / "adapter_model.safetensors").read_bytes() \
        == b"weights"
    assert (out_dir / "artifacts" / "results.json").exists()
    record = json.loads((out_dir / "run.json").read_text())
    assert record["id"] == run.id and record["last_metrics"] == {"loss": 2.0, "reward": 0.3}
    assert [a["exported"] for a in record["artifacts"]] == [
        "artifacts/checkpoint-2", "artifacts/results.json", None]
    assert record["artifacts"][2]["exists"] is False
    assert (out_dir / "run.log").read_text() == "hello\n"
    listed = tmp_path / "listed"
    cli(capsys, "runs", "export", str(run.id), "-o", str(listed), "--list-artifacts")
    assert not (listed / "artifacts").exists()
    assert len(json.loads((listed / "run.json").read_text())["artifacts"]) == 3


def test_bad_input_is_one_clear_message_and_loses_nothing(
        db: RunStore, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    kept = db.create_run("train", {"x": 1}, name="kept")
    db.add_metrics(kept.id, [MetricRow(1, "reward", 0.5, 1.0)])
    before = [(r.id, r.status, r.config) for r in db.list_runs()]
    for args in (["runs", "show", "999"], ["runs", "logs", "999"], ["runs", "cancel", "999"],
                 ["runs", "export", "999", "-o", str(tmp_path / "e")]):
        code, out, err = cli(capsys, *args)
        assert code == 2 and one_line(err) == "error: no run with id 999", args
        assert out == ""
    assert not (tmp_path / "e").exists()
    code, out, err = cli(capsys, "submit", "train", TINY_TRAIN, "max_stepz=3")
    assert code == 2 and out == ""
    assert one_line(err) == (f"error: {TINY_TRAIN}: invalid TrainConfig: 1 problem(s) - "
                             "max_stepz: Extra inputs are not permitted")
    code, _, err = cli(capsys, "submit", "train", TINY_TRAIN, "max_steps=0", "lora.r=x")
    assert code == 2
    assert "max_steps: Input should be greater than or equal to 1" in one_line(err)
    assert "lora.r: Input should be a valid integer" in one_line(err)
    code, _, err = cli(capsys, "submit", "train", str(tmp_path / "missing.yaml"))
    assert code == 2 and "config file not found" in err
    code, _, err = cli(capsys, "submit", "tune", TINY_TRAIN)
    assert code == 2 and "must be train or eval, not 'tune'" in one_line(err)
    code, _, err = cli(capsys, "runs", "list", "--status", "done")
    assert code == 2 and "--status 'done' is not one of" in one_line(err)
    code, _, err = cli(capsys, "worker", "--backend", "slurm")
    assert code == 2 and "--backend must be one of local, ray" in one_line(err)
    assert [(r.id, r.status, r.config) for r in db.list_runs()] == before
    assert db.last_metrics(kept.id) == {"reward": 0.5}


# ---------------------------------------------------------------- a real worker
class Worker:
    """``memfactory worker`` as a subprocess, its output in a file."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.file = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--heartbeat", str(HB), "--poll", "0.2",
             "--gpus", "none", "--grace", "60"],
            cwd=REPO, stdout=self.file, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.file.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    made: list[Worker] = []
    yield made
    for w in made:
        w.close()


def memfactory(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120)


@pytest.mark.slow
def test_worker_trains_a_submitted_run_end_to_end(
        db: RunStore, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        workers: list[Worker]) -> None:
    worker = Worker(tmp_path / "worker.log")
    workers.append(worker)
    sub = memfactory("submit", "train", "assets/configs/train_synthetic_tiny.yaml",
                     "max_steps=3")
    assert sub.returncode == 0, sub.stderr
    run_id = int(sub.stdout)  # stdout is the id and nothing else
    follow = subprocess.Popen([sys.executable, "-m", "app.cli", "runs", "logs", str(run_id),
                               "--follow"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    seen: list[str] = []

    def listed_status() -> str | None:
        _, out, _ = cli(capsys, "runs", "list", "--json")
        [row] = json.loads(out)
        if not seen or seen[-1] != row["status"]:
            seen.append(row["status"])
        return row["status"] if row["status"] in FINAL_STATUSES else None

    final = wait_for(listed_status, 600, interval=0.5)
    assert final == "succeeded", (seen, worker.output()[-3000:])
    assert "running" in seen
    followed = follow.communicate(timeout=60)[0]  # --follow ends by itself with the run
    assert follow.returncode == 0
    assert "step 3/3" in followed and f"run {run_id}: succeeded" in followed
    steps, _ = db.metrics(run_id)[run_id]["reward"]
    assert steps == [1, 2, 3]
    _, out, _ = cli(capsys, "runs", "show", str(run_id), "--json")
    shown = json.loads(out)
    assert shown["summary"]["steps"] == 3 and shown["summary"]["stopped"] is False
    assert shown["last_metrics"]["reward"] == shown["summary"]["last_reward"]
    assert [(a["kind"], a["step"], a["exists"]) for a in shown["artifacts"]] == [
        ("checkpoint", 3, True)]
    assert len(db.samples(run_id, kind="trajectory")) == 3 * 4  # save_samples per step
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0
    assert "worker stopped" in worker.output()


@pytest.mark.slow
def test_sigkill_of_the_worker_mid_run_then_a_restart(
        db: RunStore, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        workers: list[Worker]) -> None:
    sub = memfactory("submit", "train", TINY_TRAIN, *TINY_TRAIN_OVERRIDES)
    run_id = int(sub.stdout)
    first = Worker(tmp_path / "worker1.log")
    workers.append(first)
    wait_for(lambda: "reward" in db.metric_names(run_id), 300, interval=0.2)
    pid = db.get_run(run_id).pid
    assert db.get_run(run_id).status == "running" and pid
    first.proc.kill()  # SIGKILL: no chance to clean up
    first.proc.wait()
    # the run process notices its parent died (SIGTERM), checkpoints and requeues itself
    wait_for(lambda: db.get_run(run_id).status != "running", 4 * HB + 60, interval=0.1)
    run = db.get_run(run_id)
    assert run.status == "queued", (run.status, run.error)
    wait_for(lambda: not pid_alive(pid), 30)
    second = Worker(tmp_path / "worker2.log")
    workers.append(second)
    log = Path(run.log_path or "")
    wait_for(lambda: "resuming from" in log.read_text(), 300, interval=0.2)
    wait_for(lambda: db.get_run(run_id).status == "running", 60, interval=0.1)
    assert db.get_run(run_id).attempts == 2
    code, out, _ = cli(capsys, "runs", "cancel", str(run_id))
    assert code == 0 and "cancel requested" in out
    wait_for(lambda: db.get_run(run_id).status in FINAL_STATUSES, 120, interval=0.2)
    assert db.get_run(run_id).status == "cancelled"

