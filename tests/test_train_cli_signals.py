"""Stopping training from outside, through the real commands in their own processes:
Ctrl-C (SIGINT) or SIGTERM to ``memfactory train`` stops after the current step with a
checkpoint, ``resume=true`` continues from it without losing or repeating a step, and
SIGTERM to ``memfactory worker`` mid-run checkpoints the run and puts it back in the queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from memfactory_core.paths import ASSETS_DIR

pytestmark = pytest.mark.slow

REPO = ASSETS_DIR.parent
CONFIG = "assets/configs/train_synthetic_tiny.yaml"
# a few steps a second on a shared CPU; far more steps than a test waits for
SMALL = ["save_steps=1000", "num_generations=2", "questions_per_step=1",
         "per_device_train_batch_size=8"]
T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def workspace(tmp_path: Path) -> dict[str, str]:
    """The environment of the commands: a workspace of this test's own that shares the
    session's model cache."""
    shared_models = Path(os.environ["MEMFACTORY_HOME"]) / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(shared_models, target_is_directory=True)
    env = {**os.environ, "MEMFACTORY_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("MEMFACTORY_DB_URL", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def steps_logged(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]


def train(env: dict[str, str], out: Path, *overrides: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "train", CONFIG, "--quiet", *SMALL,
         f"output_dir={out}", *overrides],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_training_after_the_step_with_a_checkpoint_then_resume(
        tmp_path: Path, sig: signal.Signals) -> None:
    env = workspace(tmp_path)
    out = tmp_path / "run"
    proc = train(env, out, "max_steps=500")
    try:
        wait_for(lambda: steps_logged(out) or proc.poll() is not None, 300, "a first step")
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(sig)
        output = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    steps = steps_logged(out)
    last = steps[-1]
    assert steps == list(range(1, last + 1)) and last < 500
    assert f"stopped at step {last}" in output
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{last}"]
    assert (out / f"checkpoint-{last}" / "adapter_model.safetensors").is_file()
    state = json.loads((out / f"checkpoint-{last}" / "trainer_state.json").read_text())
    assert state["step"] == last

    # the same command with resume=true goes on from that checkpoint: the steps already
    # logged stay as they were (a restart from step 1 would log them again, differently)
    before = (out / "metrics.jsonl").read_text()
    resumed = train(env, out, f"max_steps={last + 2}", "resume=true")
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert steps_logged(out) == list(range(1, last + 3))  # none lost, none repeated
    assert (out / "metrics.jsonl").read_text().startswith(before)
    assert f"done at step {last + 2}" in output
    assert (out / f"checkpoint-{last + 2}" / "adapter_model.safetensors").is_file()


def test_a_non_empty_output_dir_without_resume_is_refused(tmp_path: Path) -> None:
    env = workspace(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    proc = train(env, out, "max_steps=2")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0
    assert "resume=true" in output and "--overwrite" in output
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "reward": 0.5}\n'  # kept


def test_sigterm_to_a_worker_mid_run_checkpoints_and_requeues_it(tmp_path: Path) -> None:
    from jobs.store import RunStore

    env = workspace(tmp_path)
    sub = subprocess.run([sys.executable, "-m", "app.cli", "submit", "train", CONFIG,
                          "max_steps=500", *SMALL], cwd=REPO, env=env, text=True,
                         capture_output=True, timeout=300)
    assert sub.returncode == 0, sub.stderr
    run_id = int(sub.stdout)
    store = RunStore(url=f"sqlite:///{env['MEMFACTORY_HOME']}/memfactory.db", migrate=False)
    log = tmp_path / "worker.log"
    with log.open("ab") as f:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--heartbeat", "0.5", "--poll", "0.2",
             "--gpus", "none", "--grace", "120"],
            cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "reward" in store.metric_names(run_id) or worker.poll() is not None,
                 300, "a first training step")
        assert worker.poll() is None, log.read_text()
        run_pid = store.get_run(run_id).pid
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=180) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    run = store.get_run(run_id)
    assert run.status == "queued", (run.status, run.error, log.read_text()[-3000:])
    assert "resumes from its last checkpoint" in (run.error or "")
    assert run_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(run_pid, 0)  # the run process ended with its worker
    checkpoints = [a for a in store.artifacts(run_id) if a.kind == "checkpoint"]
    assert checkpoints and Path(checkpoints[-1].path).is_dir()
    steps, _ = store.metrics(run_id)[run_id]["reward"]
    assert checkpoints[-1].step == steps[-1]  # the checkpoint is of the last step done
    assert "stopped at step" in Path(run.log_path or "").read_text()
