"""A training callback that writes metrics, samples and checkpoints into the run store from a
background thread, so a slow or locked database never stalls a training step."""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.store import MetricRow, RunStore
from memfactory_core.training.callbacks import TrainingCallback, TrainState

TRAIN_SAMPLE_KIND = "trajectory"
EVAL_RECORD_KIND = "eval_record"


@dataclass
class _Samples:
    kind: str
    step: int | None
    rows: list[dict[str, Any]]


@dataclass
class _Artifact:
    kind: str
    path: str
    step: int | None


@dataclass
class _Flush:
    """A marker: everything queued before it is written (or given up on) once ``done`` is set."""

    done: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    stop: bool = False


def metric_rows(step: int, metrics: Mapping[str, Any], now: float | None = None
                ) -> list[MetricRow]:
    """The finite numeric values of ``metrics`` as rows of ``step`` (``step`` itself and
    non-numbers are left out; NaN cannot be stored everywhere)."""
    t = time.time() if now is None else now
    rows = []
    for name, value in metrics.items():
        if name == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            rows.append(MetricRow(step=step, name=name, value=float(value), time=t))
    return rows


class StoreSink(TrainingCallback):
    """Queues metrics, samples and artifacts of run ``run_id``; a background thread writes them
    in batches (every ``flush_s`` seconds or ``max_rows`` rows) and retries database errors
    with exponential backoff. ``on_step`` only enqueues. ``flush``/``close`` (and the end of
    training) wait until everything queued is stored.

    Also usable outside training: :meth:`log_metrics`, :meth:`log_samples`,
    :meth:`log_artifact`.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: int,
        *,
        flush_s: float = 1.0,
        max_rows: int = 500,
        sample_kind: str = TRAIN_SAMPLE_KIND,
        max_backoff_s: float = 10.0,
        close_timeout_s: float = 600.0,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.flush_s = flush_s
        self.max_rows = max_rows
        self.sample_kind = sample_kind
        self.max_backoff_s = max_backoff_s
        self.close_timeout_s = close_timeout_s
        #: rows stored so far, and rows given up on (only when closing times out)
        self.written = {"metrics": 0, "samples": 0, "artifacts": 0}
        self.lost = 0
        self.errors = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"store-sink-{run_id}",
                                        daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- logging
    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Queue the numeric values of ``metrics`` at ``step``."""
        rows = metric_rows(step, metrics)
        if rows:
            self._put(rows)

    def log_samples(self, samples: Iterable[dict[str, Any]], kind: str | None = None,
                    step: int | None = None) -> None:
        """Queue samples (trajectories, eval records) of ``kind`` at ``step``."""
        rows = list(samples)
        if rows:
            self._put(_Samples(kind or self.sample_kind, step, rows))

    def log_artifact(self, kind: str, path: str | Path, step: int | None = None) -> None:
        """Queue an artifact row (a checkpoint, a results file)."""
        self._put(_Artifact(kind, str(path), step))

    def _put(self, item: Any) -> None:
        if self._closed:
            raise RuntimeError(f"StoreSink of run {self.run_id} is closed")
        self._queue.put(item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is stored; False if that took longer than
        ``timeout`` (default ``close_timeout_s``) and some rows were given up on."""
        if self._closed:
            return self.lost == 0
        marker = _Flush()
        self._queue.put(marker)
        marker.done.wait(self.close_timeout_s + 5 if timeout is None else timeout)
        return marker.ok

    def close(self, timeout: float | None = None) -> bool:
        """Store everything queued, then stop the writer thread; returns whether nothing was
        lost."""
        if self._closed:
            return self.lost == 0
        marker = _Flush(stop=True)
        self._queue.put(marker)
        self._closed = True
        marker.done.wait(self.close_timeout_s + 5 if timeout is None else timeout)
        self._thread.join(timeout=1.0)
        return marker.ok and self.lost == 0

    # ---------------------------------------------------------- callback API
    def on_step(self, state: TrainState, metrics: dict[str, float],
                samples: list[dict[str, Any]]) -> None:
        if not state.logged:
            return
        self.log_metrics(state.step, metrics)
        if samples:
            self.log_samples(samples, step=state.step)

    def on_save(self, state: TrainState, path: Path) -> None:
        self.log_artifact("checkpoint", path, state.step)

    def on_train_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.flush()

    # ---------------------------------------------------------------- writer
    def _loop(self) -> None:
        pending: list[Any] = []
        backoff = 0.0
        deadline = 0.0
        while True:
            wait = max(0.0, deadline - time.monotonic()) if pending else None
            try:
                items = [self._queue.get(timeout=wait)]
            except queue.Empty:
                items = []
            while items and not isinstance(items[-1], _Flush):  # take the whole backlog
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            marker = items.pop() if items and isinstance(items[-1], _Flush) else None
            if items and not pending:
                deadline = time.monotonic() + self.flush_s
            pending.extend(items)
            if marker is not None:
                pending = self._write_until(pending, self.close_timeout_s)
                marker.ok = not pending
                if pending:  # the database stayed unreachable: say what is lost
                    lost = sum(_size(x) for x in pending)
                    self.lost += lost
                    print(f"run {self.run_id}: could not store {lost} row(s) "
                          f"({self.errors} database error(s))", file=sys.stderr, flush=True)
                    pending = []
                backoff = 0.0
                marker.done.set()
                if marker.stop:
                    return
                continue
            full = backoff == 0.0 and sum(_size(x) for x in pending) >= self.max_rows
            if pending and (full or time.monotonic() >= deadline):
                pending = self._write_once(pending)
                if pending:  # retry later with backoff; new rows keep queueing meanwhile
                    backoff = min(max(backoff * 2, 0.2), self.max_backoff_s)
                    deadline = time.monotonic() + backoff
                else:
                    backoff = 0.0

    def _write_once(self, items: list[Any]) -> list[Any]:
        """Store ``items`` in one transaction; returns them unwritten on a database error."""
        metrics: list[MetricRow] = []
        samples: list[tuple[str, int | None, dict[str, Any]]] = []
        artifacts: list[tuple[str, str, int | None]] = []
        for x in items:
            if isinstance(x, list):
                metrics.extend(x)
            elif isinstance(x, _Samples):
                samples.extend((x.kind, x.step, d) for d in x.rows)
            else:
                artifacts.append((x.kind, x.path, x.step))
        try:
            self.store.write_batch(self.run_id, metrics, samples, artifacts)
        except Exception as exc:
            self.errors += 1
            if self.errors == 1 or self.errors % 20 == 0:
                print(f"run {self.run_id}: storing metrics failed, will retry "
                      f"({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
            return items
        self.written["metrics"] += len(metrics)
        self.written["samples"] += len(samples)
        self.written["artifacts"] += len(artifacts)
        return []

    def _write_until(self, items: list[Any], timeout: float) -> list[Any]:
        """Store ``items``, retrying with backoff for up to ``timeout`` seconds."""
        start = time.monotonic()
        backoff = 0.1
        while items:
            items = self._write_once(items)
            if not items or time.monotonic() - start + backoff > timeout:
                break
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
        return items


def _size(item: Any) -> int:
    if isinstance(item, list):
        return len(item)
    if isinstance(item, _Samples):
        return len(item.rows)
    return 1
