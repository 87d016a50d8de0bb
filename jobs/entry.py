"""``python -m jobs.entry RUN_ID``: the process of one run.

It reads its run from the store (``MEMFACTORY_DB_URL``, removed from its environment once
connected), checks the config again against what submitted runs may do (API-key variables,
``trust_remote_code``, paths outside the data roots of :mod:`jobs.data_roots`), heartbeats
every ``MEMFACTORY_HEARTBEAT_S`` seconds from a thread, executes the training or evaluation,
streams metrics, samples and artifacts into the store, and writes the run's final status itself:

- ``succeeded`` when it completes;
- ``cancelled`` when a cancel was requested (training stops at its next step with a
  checkpoint; an evaluation ends at once);
- SIGTERM without a cancel request (the worker shutting down or gone): a resumable run
  (training) is requeued and resumes from its checkpoint, anything else fails "interrupted";
- ``failed`` with the traceback (a :class:`MemFactoryError`: its message) on an exception.
"""

from __future__ import annotations

import _thread
import contextlib
import faulthandler
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.data_roots import DataRoots, check_paths, safe_error_message, sqlite_file
from jobs.db import DB_URL_ENV
from jobs.models import ACTIVE_STATUSES, Run
from jobs.store import RunStore, host_name
from memfactory_core.config import RESTRICTED_ENV, check_submitted_config
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:  # imported when needed: they bring torch, and signals come first
    from jobs.sink import StoreSink
    from memfactory_core.training.callbacks import StopCallback, TrainingCallback

HEARTBEAT_ENV = "MEMFACTORY_HEARTBEAT_S"
ATTEMPT_ENV = "MEMFACTORY_RUN_ATTEMPT"
DEFAULT_HEARTBEAT_S = 5.0
#: exit code when the run was taken over by another attempt and this process gave up on it
EXIT_TAKEN_OVER = 3


def heartbeat_period() -> float:
    """Seconds between heartbeats: ``$MEMFACTORY_HEARTBEAT_S``, default 5."""
    raw = os.environ.get(HEARTBEAT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_HEARTBEAT_S
    except ValueError:
        value = DEFAULT_HEARTBEAT_S
    return value if value > 0 else DEFAULT_HEARTBEAT_S


def log(message: str) -> None:
    """One timestamped line on stdout (the run's log file)."""
    print(f"[{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}] {message}", flush=True)


class RunInterrupted(BaseException):
    """Raised in the main thread to end work that cannot stop between steps (a
    BaseException, so that library code catching Exception lets it through)."""


class RunControl:
    """Why and when this run should stop: a cancel request (seen by the heartbeat thread), a
    SIGTERM/SIGINT, or the run no longer being this attempt's.

    Training stops at its next step through :meth:`stop_callback`. Code run inside
    :meth:`interruptible` (an evaluation, model loading) is ended at once by raising
    :class:`RunInterrupted` in the main thread.
    """

    def __init__(self, store: RunStore, run_id: int, attempt: int, period: float) -> None:
        self.store = store
        self.run_id = run_id
        self.attempt = attempt
        self.period = period
        self.requested = False
        self.stop: StopCallback | None = None
        self.signalled = False
        self.cancelled = False
        self.lost = False
        self._interruptible = False
        self._raised = False
        self._finishing = False
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._db_errors = 0
        self._thread = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Install the signal handlers (main thread) and start heartbeating."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._thread.start()

    def close(self) -> None:
        """Stop heartbeating; after this the thread never acts on the run again."""
        with self._lock:
            self._finishing = True
        self._halt.set()
        self._thread.join(timeout=2 * self.period + 1)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block that a stop request ends by raising :class:`RunInterrupted`."""
        if self.requested:
            self._raised = True
            raise RunInterrupted("stop requested")
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    def request_stop(self) -> None:
        """Stop at the next step, or now inside :meth:`interruptible` (any thread)."""
        self.requested = True
        if self.stop is not None:
            self.stop.request()
        if self._interruptible and not self._raised:
            # runs the signal handler in the main thread, which raises there
            _thread.interrupt_main(signal.SIGTERM)

    def _on_signal(self, signum: int, frame: object) -> None:
        # the main thread, between two bytecodes: set flags only, or raise
        if not self.cancelled and not self.lost:
            self.signalled = True
        self.requested = True
        if self.stop is not None:
            self.stop.request()
        if self._interruptible and not self._raised:
            self._raised = True
            raise RunInterrupted(signal.Signals(signum).name)

    def stop_callback(self) -> StopCallback:
        """The training callback through which a stop request ends training at its next
        step (with a checkpoint)."""
        from memfactory_core.training.callbacks import StopCallback

        self.stop = StopCallback()
        if self.requested:  # set before the callback existed
            self.stop.request()
        return self.stop

    def _beat_loop(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as exc:  # never let the heartbeat thread die
                log(f"heartbeat error ({type(exc).__name__}: {exc})")
            if self._halt.wait(self.period):
                return

    def beat(self) -> None:
        """One heartbeat: record liveness, notice a cancel request or a lost run."""
        try:
            cancel = self.store.heartbeat(self.run_id, attempt=self.attempt)
            run = self.store.get_run(self.run_id)
        except Exception as exc:  # the database may come back: keep running
            self._db_errors += 1
            if self._db_errors == 1 or self._db_errors % 20 == 0:
                log(f"heartbeat failed ({type(exc).__name__}: {exc})")
            return
        with self._lock:
            if self._finishing:
                return
            if run.attempts != self.attempt or run.status == "queued":
                # requeued or claimed again elsewhere: another process owns the output folder
                log(f"run {self.run_id} was taken over (now {run.status}, attempt "
                    f"{run.attempts}); this process (attempt {self.attempt}) exits")
                os._exit(EXIT_TAKEN_OVER)
            if run.status not in ACTIVE_STATUSES:
                if not self.lost:
                    log(f"run {self.run_id} was marked {run.status} elsewhere; stopping")
                self.lost = True
                self.request_stop()
            elif cancel:
                if not self.cancelled:
                    log("cancel requested; stopping")
                self.cancelled = True
                self.request_stop()


def step_log_callback() -> TrainingCallback:
    """A callback printing one plain line per step (a log file gets no progress bar)."""
    from memfactory_core.training.callbacks import TrainingCallback, TrainState

    class StepLog(TrainingCallback):
        def on_train_begin(self, state: TrainState, config: dict[str, Any]) -> None:
            log(f"training steps {state.start_step + 1}..{state.max_steps}")

        def on_step(self, state: TrainState, metrics: dict[str, float],
                    samples: list[dict[str, Any]]) -> None:
            parts = [f"step {state.step}/{state.max_steps}"]
            for key in ("reward", "loss", "kl", "grad_norm"):
                if isinstance(metrics.get(key), int | float):
                    parts.append(f"{key}={metrics[key]:.4f}")
            if isinstance(metrics.get("step_time"), int | float):
                parts.append(f"{metrics['step_time']:.2f}s/step")
            log(" ".join(parts))

        def on_save(self, state: TrainState, path: Path) -> None:
            log(f"saved {path}")

    return StepLog()


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as None, so it stores as JSON anywhere."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------- kinds
def run_train(run: Run, store: RunStore, control: RunControl, sink: StoreSink
              ) -> tuple[dict[str, Any], bool]:
    """Train; returns the run summary and whether it stopped before ``max_steps``."""
    from memfactory_core.config import validate_config
    from memfactory_core.training.callbacks import JsonlCallback, ReportToCallback
    from memfactory_core.training.config import TrainConfig
    from memfactory_core.training.reranker_trainer import build_trainer
    from memfactory_core.training.trainer import latest_checkpoint

    cfg = validate_config(run.config, TrainConfig, source=f"run {run.id} config")
    ckpt = latest_checkpoint(cfg.output_dir)
    if ckpt is not None:
        log(f"resuming from {ckpt}")
        cfg = cfg.model_copy(update={"resume": True})
    callbacks: list[TrainingCallback] = [step_log_callback(), JsonlCallback(), sink,
                                         control.stop_callback()]
    if cfg.report_to:
        callbacks.append(ReportToCallback(cfg.report_to))
    with control.interruptible():
        trainer = build_trainer(cfg, callbacks)
    result = trainer.train()
    last = result["last_metrics"]
    best = store.best_metric([run.id])[run.id]
    stopped = bool(result["stopped"]) and result["steps"] < cfg.max_steps
    if stopped:
        log(f"stopped at step {result['steps']} with a checkpoint")
    summary = {
        "steps": result["steps"], "max_steps": cfg.max_steps,
        "start_step": result["start_step"], "stopped": stopped,
        "last_reward": last.get("reward"), "best_reward": best,
        "seconds": round(result["seconds"], 3), "checkpoint": result["checkpoint"],
    }
    return summary, stopped


def run_eval(run: Run, store: RunStore, control: RunControl, sink: StoreSink
             ) -> tuple[dict[str, Any], bool]:
    """Evaluate; the summary goes to metrics at step 0, records to samples."""
    from memfactory_core.config import validate_config
    from memfactory_core.eval.config import EvalConfig
    from memfactory_core.eval.runner import evaluate

    cfg = validate_config(run.config, EvalConfig, source=f"run {run.id} config")
    log(f"evaluating {cfg.data.path} (docs={cfg.data.docs}, limit={cfg.data.limit})")
    with control.interruptible():
        results = evaluate(cfg, progress=False, on_batch=_log_eval_progress)
    summary = {k: v for k, v in results["summary"].items() if k not in ("config", "pipeline")}
    sink.log_metrics(0, eval_metrics(summary))
    sink.log_samples(results["records"], kind="eval_record", step=0)
    sink.log_artifact("results", Path(cfg.output_dir) / "results.json")
    log("  ".join(f"{k}={summary[k]:.3f}" for k in ("em", "sub_em", "f1", "boxed_rate")
                  if isinstance(summary.get(k), int | float)) + f"  n={summary.get('n')}")
    return summary, False


def _log_eval_progress(docs: int | None, done: int, total: int) -> None:
    log(f"evaluated {done}/{total} questions" + (f" at {docs} documents" if docs else ""))


def eval_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """An evaluation summary as flat metrics: ``em``, ``em_ci95_low``, ... and, for a
    context-length sweep, ``em@docs=50`` etc."""
    out: dict[str, float] = {}

    def add(values: dict[str, Any], suffix: str) -> None:
        for key, value in values.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                out[key + suffix] = float(value)
            elif (isinstance(value, list) and len(value) == 2
                  and all(isinstance(v, int | float) for v in value)):
                out[f"{key}_low{suffix}"] = float(value[0])
                out[f"{key}_high{suffix}"] = float(value[1])

    add(summary, "")
    for docs, part in (summary.get("by_docs") or {}).items():
        if isinstance(part, dict):
            add(part, f"@docs={docs}")
    return out


KINDS: dict[str, Callable[[Run, RunStore, RunControl, StoreSink],
                          tuple[dict[str, Any], bool]]] = {"train": run_train, "eval": run_eval}


# ---------------------------------------------------------------------------- main
def _retry(what: str, fn: Callable[[], Any], tries: int = 6) -> Any:
    """Final writes survive a briefly unavailable database."""
    delay = 0.5
    for i in range(tries):
        try:
            return fn()
        except MemFactoryError:
            raise
        except Exception as exc:
            if i == tries - 1:
                log(f"{what} failed: {type(exc).__name__}: {exc}")
                raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    return None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MemFactoryError):
        # a submitted config names the files: the message never echoes what is in them
        return safe_error_message(exc)
    return "".join(traceback.format_exception(exc)).rstrip()


def execute(store: RunStore, run: Run, attempt: int) -> int:
    """Execute ``run`` to a final status (or back to the queue); returns the exit code."""
    control = RunControl(store, run.id, attempt, heartbeat_period())
    control.start()
    log(f"run {run.id} ({run.kind}) attempt {attempt}: pid {os.getpid()} on {host_name()}"
        + (f", CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"
           if "CUDA_VISIBLE_DEVICES" in os.environ else ""))
    from jobs.sink import StoreSink

    sink = StoreSink(store, run.id)
    summary: dict[str, Any] = {}
    stopped = False
    error: str | None = None
    try:
        if run.cancel_requested_at is not None:
            raise RunInterrupted("cancelled before it started")
        # checked at submission too; a config written to the store another way is caught here
        check_submitted_config(run.config, source=f"run {run.id} config")
        check_paths(run.config, DataRoots.current(db_path=sqlite_file(store.engine.url)),
                    source=f"run {run.id} config")
        summary, stopped = KINDS[run.kind](run, store, control, sink)
    except RunInterrupted as exc:
        log(f"interrupted ({exc})")
        stopped = True
    except BaseException as exc:  # the run fails, whatever it was
        error = _error_text(exc)
        if isinstance(exc, MemFactoryError):
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc()
        sys.stderr.flush()
    finally:
        if not sink.close():
            log("some metrics or samples could not be stored")
        control.close()
    return _finalize(store, run, attempt, control, _finite(summary), stopped, error)


def _finalize(store: RunStore, run: Run, attempt: int, control: RunControl,
              summary: dict[str, Any], stopped: bool, error: str | None) -> int:
    if control.lost:
        log("the run is no longer active here; leaving its status as it is")
        return 0
    if error is not None:
        _retry("recording the failure", lambda: store.finish(
            run.id, "failed", error=error, summary=summary or None, attempt=attempt))
        log(f"run {run.id}: failed")
        return 1
    if not stopped:
        _retry("recording success", lambda: store.finish(
            run.id, "succeeded", summary=summary, attempt=attempt))
        log(f"run {run.id}: succeeded")
        return 0
    fresh = _retry("reading the run", lambda: store.get_run(run.id))
    if fresh.cancel_requested_at is not None or control.cancelled:
        _retry("recording the cancel", lambda: store.finish(
            run.id, "cancelled", summary=summary or None, attempt=attempt))
        log(f"run {run.id}: cancelled")
        return 0
    if run.resumable:
        if summary:
            _retry("saving the summary", lambda: store.update_run(run.id, summary=summary))
        _retry("requeueing", lambda: store.requeue(
            run.id, "interrupted; resumes from its last checkpoint", attempt=attempt))
        log(f"run {run.id}: interrupted, back in the queue")
        return 0
    _retry("recording the interruption", lambda: store.finish(
        run.id, "failed", error="interrupted", summary=summary or None, attempt=attempt))
    log(f"run {run.id}: failed (interrupted)")
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the run whose id is the only argument; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m jobs.entry RUN_ID", file=sys.stderr)
        return 2
    faulthandler.enable()  # a crash in native code still leaves a traceback in the log
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    run_id = int(args[0])
    try:
        store = RunStore(migrate=False)
    except MemFactoryError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    # the store holds its connection; nothing the run executes needs (or may read) the URL,
    # which for PostgreSQL carries a password
    os.environ.pop(DB_URL_ENV, None)
    os.environ[RESTRICTED_ENV] = "1"
    try:
        run = _retry("reading the run", lambda: store.get_run(run_id))
    except MemFactoryError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    attempt = int(os.environ.get(ATTEMPT_ENV) or run.attempts)
    if run.status not in ACTIVE_STATUSES or run.attempts != attempt:
        log(f"run {run_id} is {run.status} (attempt {run.attempts}); nothing to do")
        return 0
    return execute(store, run, attempt)


if __name__ == "__main__":
    sys.exit(main())
