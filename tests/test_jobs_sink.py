"""The store sink: training steps never wait for the database, and nothing queued is lost."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from jobs.sink import StoreSink, metric_rows
from jobs.store import RunStore
from memfactory_core.training.callbacks import TrainState


class SlowStore(RunStore):
    """A store whose writes take ``delay`` seconds and fail the first ``failures`` times."""

    def __init__(self, url: str, delay: float = 0.0, failures: int = 0) -> None:
        super().__init__(url=url)
        self.delay = delay
        self.failures = failures
        self.calls = 0

    def write_batch(self, run_id: int, metrics: Any = (), samples: Any = (),
                    artifacts: Any = ()) -> tuple[int, int, int]:
        self.calls += 1
        time.sleep(self.delay)
        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return super().write_batch(run_id, metrics, samples, artifacts)


def _state(step: int, logged: bool = True) -> TrainState:
    return TrainState(step=step, max_steps=100, output_dir=Path("."), logged=logged)


def _metrics(step: int) -> dict[str, float]:
    return {"step": step, "reward": step / 10, "loss": 0.5, "kl": 0.01}


def test_a_slow_database_does_not_slow_training_steps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    store = SlowStore(url, delay=0.3)
    run = store.create_run("train", {})
    sink = StoreSink(store, run.id, flush_s=0.05, max_rows=10)
    slowest = 0.0
    for step in range(1, 31):
        t0 = time.perf_counter()
        sink.on_step(_state(step), _metrics(step), [{"step": step, "trace": "x" * 1000}])
        slowest = max(slowest, time.perf_counter() - t0)
    # each write takes 0.3 s; a step only enqueues, so no step waits as long as one write
    # (bench/store_throughput.py measures the step time with the sink against without)
    assert slowest < 0.3
    t0 = time.perf_counter()
    sink.on_train_end(_state(30), _metrics(30))
    assert time.perf_counter() - t0 > 0.2  # the end of training waits for the writes
    assert store.calls < 10  # rows were batched, not written one call per step
    series = store.metrics(run.id)[run.id]
    assert sorted(series) == ["kl", "loss", "reward"]
    assert series["reward"][0] == list(range(1, 31))
    assert len(store.samples(run.id, kind="trajectory")) == 30
    assert sink.close()


def test_database_errors_are_retried_until_every_row_is_stored(tmp_path: Path) -> None:
    store = SlowStore(f"sqlite:///{tmp_path}/db.sqlite", failures=4)
    run = store.create_run("train", {})
    sink = StoreSink(store, run.id, flush_s=0.01, max_backoff_s=0.05)
    for step in range(1, 11):
        sink.on_step(_state(step), _metrics(step), [{"step": step}])
    sink.on_save(_state(10), tmp_path / "checkpoint-10")
    assert sink.close()
    assert sink.errors == 4 and sink.lost == 0
    assert store.metrics(run.id)[run.id]["reward"][0] == list(range(1, 11))
    assert len(store.samples(run.id)) == 10
    [artifact] = store.artifacts(run.id)
    assert (artifact.kind, artifact.step) == ("checkpoint", 10)


def test_rows_are_streamed_while_training_goes_on(tmp_path: Path) -> None:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    run = store.create_run("train", {})
    sink = StoreSink(store, run.id, flush_s=0.05)
    sink.on_step(_state(1), _metrics(1), [])
    deadline = time.monotonic() + 5
    while not store.metric_names(run.id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.last_metrics(run.id)["reward"] == pytest.approx(0.1)
    sink.close()


def test_only_logged_finite_numbers_are_stored(tmp_path: Path) -> None:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    run = store.create_run("train", {})
    sink = StoreSink(store, run.id)
    sink.on_step(_state(1, logged=False), _metrics(1), [{"step": 1}])
    sink.on_step(_state(2), {"reward": float("nan"), "loss": float("inf"), "ok": True,
                             "note": "text", "kl": 2}, [])
    assert sink.close()
    assert store.last_metrics(run.id) == {"kl": 2.0}
    assert store.samples(run.id) == []
    assert [r.name for r in metric_rows(3, {"step": 3, "a": 1, "b": None}, now=1.0)] == ["a"]


def test_eval_use_and_a_database_that_never_comes_back(tmp_path: Path) -> None:
    store = SlowStore(f"sqlite:///{tmp_path}/db.sqlite")
    run = store.create_run("eval", {})
    sink = StoreSink(store, run.id, close_timeout_s=0.5, max_backoff_s=0.1)
    sink.log_metrics(0, {"em": 0.5, "f1": 0.75})
    sink.log_samples([{"id": "q1"}, {"id": "q2"}], kind="eval_record", step=0)
    sink.log_artifact("results", tmp_path / "results.json")
    assert sink.flush()
    assert store.last_metrics(run.id) == {"em": 0.5, "f1": 0.75}
    assert [s.data["id"] for s in store.samples(run.id, kind="eval_record")] == ["q1", "q2"]
    store.failures = 10**6  # the database is gone for good: closing gives up, says so
    sink.log_metrics(1, {"em": 1.0})
    t0 = time.perf_counter()
    assert not sink.close()
    assert time.perf_counter() - t0 < 60  # gives up rather than hanging
    assert sink.lost == 1
    with pytest.raises(RuntimeError, match="closed"):
        sink.log_metrics(2, {"em": 1.0})
