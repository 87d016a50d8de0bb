"""The run store's cost to training and to the Runs page, measured side by side.

1. Training step time with the store sink vs without (target ratio <= 1.05): the same
   tiny-random synthetic GRPO run, alternating plain / with the sink, several rounds. A step's
   time is the wall time between consecutive ``on_step`` calls, so it includes every
   callback. A third arm puts 200 ms of latency on every database write, to show that a slow
   database does not stall training.
2. Server-side time to build the Runs chart for 20 runs x 5,000 points each (target < 300 ms):
   reading the series from SQLite and building the Plotly figure; then the same 20 runs with
   five metric panels each (500,000 points), for scale.

Run with OMP_NUM_THREADS=1 on a shared CPU.
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MEMFACTORY_HOME", os.path.join(tempfile.gettempdir(), "mfhome-bench"))

ROUNDS, STEPS, SKIP = 3, 12, 2
RUNS, POINTS = 20, 5_000
CHART_METRICS = ("reward", "rewards/boxed_em", "rewards/format", "kl", "completion_length")


def _config(out: Path) -> Any:
    from memfactory_core.config import load_config
    from memfactory_core.training.config import TrainConfig

    return load_config("assets/configs/train_synthetic_tiny.yaml",
                       [f"max_steps={STEPS}", f"output_dir={out}", "save_steps=1000"],
                       TrainConfig)


def step_times(tmp: Path, arm: str, round_: int) -> list[float]:
    """Seconds between consecutive steps of one short training run."""
    from jobs.sink import StoreSink
    from jobs.store import RunStore
    from memfactory_core.training.callbacks import JsonlCallback, TrainingCallback
    from memfactory_core.training.trainer import GRPOTrainer

    marks: list[float] = []

    class Clock(TrainingCallback):
        def on_train_begin(self, state: Any, config: dict[str, Any]) -> None:
            marks.append(time.perf_counter())

        def on_step(self, state: Any, metrics: dict[str, float], samples: list[Any]) -> None:
            marks.append(time.perf_counter())

    callbacks: list[TrainingCallback] = [JsonlCallback()]
    sink = None
    if arm != "plain":
        store = RunStore(url=f"sqlite:///{tmp}/{arm.replace(' ', '_')}-{round_}.sqlite")
        if arm == "sink, slow db":
            write = store.write_batch

            def slow_write(*args: Any, **kwargs: Any) -> Any:
                time.sleep(0.2)
                return write(*args, **kwargs)

            store.write_batch = slow_write  # type: ignore[method-assign]
        run = store.create_run("train", {})
        sink = StoreSink(store, run.id)
        callbacks.append(sink)
    # the clock goes last: a step's time includes the other callbacks' on_step
    callbacks.append(Clock())
    GRPOTrainer(_config(tmp / f"{arm}-{round_}".replace(" ", "_").replace(",", "")),
                callbacks).train()
    if sink is not None:
        rows = store.metrics(run.id)[run.id]
        assert len(rows["reward"][0]) == STEPS, "the sink lost metric rows"
    deltas = [b - a for a, b in itertools.pairwise(marks)]
    return deltas[SKIP:]


def bench_sink() -> None:
    arms = ("plain", "sink", "sink, slow db")
    times: dict[str, list[float]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as d:
        for r in range(ROUNDS):
            for arm in arms:
                times[arm] += step_times(Path(d), arm, r)
    base = statistics.median(times["plain"])
    print(f"training step time, tiny-random synthetic GRPO, {ROUNDS} rounds x "
          f"{STEPS - SKIP} steps per arm (median):")
    for arm in arms:
        med = statistics.median(times[arm])
        print(f"  {arm:14s} {med * 1000:8.1f} ms/step   ratio to plain {med / base:.3f}")
    ratio = statistics.median(times["sink"]) / base
    print(f"store sink ratio: {ratio:.3f} (target <= 1.05)")


def bench_chart(chart_metrics: tuple[str, ...], target: bool) -> None:
    from app.charts import run_curves_figure
    from jobs.store import MetricRow, RunStore

    with tempfile.TemporaryDirectory() as d:
        store = RunStore(url=f"sqlite:///{d}/chart.sqlite")
        ids = []
        now = time.time()
        for r in range(RUNS):
            run = store.create_run("train", {}, name=f"run {r}")
            ids.append(run.id)
            rows = [MetricRow(step, name, (step % 97) / 97 + r * 0.01, now)
                    for step in range(1, POINTS + 1) for name in chart_metrics]
            store.add_metrics(run.id, rows)
        timings = []
        for _ in range(5):
            t0 = time.perf_counter()
            series = store.metrics(ids, names=chart_metrics)
            t1 = time.perf_counter()
            fig = run_curves_figure(series, {i: f"run {i}" for i in ids}, smoothing=0.6)
            fig.to_plotly_json()
            t2 = time.perf_counter()
            timings.append((t1 - t0, t2 - t1, t2 - t0))
        read, build, total = (statistics.median(x) for x in zip(*timings, strict=True))
        points = RUNS * POINTS * len(chart_metrics)
        print(f"Runs chart, {RUNS} runs x {POINTS} steps x {len(chart_metrics)} metric(s) "
              f"({points:,} points), median of 5:")
        print(f"  read from the store {read * 1000:7.1f} ms")
        print(f"  build the figure    {build * 1000:7.1f} ms")
        goal = " (target < 300 ms)" if target else ""
        print(f"  total               {total * 1000:7.1f} ms{goal}")


if __name__ == "__main__":
    bench_sink()
    bench_chart(("reward",), target=True)  # comparing 20 runs' reward curves
    bench_chart(CHART_METRICS, target=False)  # and five panels of each
