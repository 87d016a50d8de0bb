"""Server time to build the Compare tab for 10 evaluation runs x 1,000 records (target < 1 s).

Ten stored evaluation runs, each with a ``results.json`` of 1,000 records (500 questions at two
context lengths, five categories, a short trace per record), compared against the first: the
same calls the tab makes (load the runs, the evaluation table with paired bootstrap intervals,
the settings diff, parallel coordinates, context-length chart, per-question view), timed part by
part. The first build parses the files (cold); later builds reuse the parsed results, as the
page does while a person changes the base run or the metric (warm). Exports are timed apart.

Run with OMP_NUM_THREADS=1 on a shared CPU: ``.venv/bin/python bench/compare.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MEMFACTORY_HOME", os.path.join(tempfile.gettempdir(), "mfhome-bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RUNS, QUESTIONS, DOCS, CATEGORIES = 10, 500, [50, 100], [1, 2, 3, 4, 5]
ROUNDS = 5


def make_store(tmp: Path) -> tuple[Any, list[int]]:
    from jobs.store import RunStore
    from tests.compare_fixtures import eval_config, make_records, write_results

    store = RunStore(url=f"sqlite:///{tmp}/bench.sqlite")
    ids = []
    for i in range(RUNS):
        cfg = eval_config(f"model-{i % 3}", lr=[1e-3, 1e-4][i % 2], step=i * 10)
        run = store.create_run("eval", cfg, name=f"eval {i}", pipeline="memagent")
        records = make_records(QUESTIONS, 0.2 + 0.03 * i, seed=i, docs=DOCS,
                               categories=CATEGORIES, trace_chars=2000)
        write_results(Path(run.output_dir) / "results.json", records, cfg)
        ids.append(run.id)
    return store, ids


def build(store: Any, ids: list[int], base: int) -> dict[str, float]:
    """What the tab computes on a change of selection, part by part (seconds)."""
    from app import compare

    t0 = time.perf_counter()
    runs, comparison = compare.compare_stored_runs(store, ids, base)
    parts = dict(comparison["timings"])
    t1 = time.perf_counter()
    compare.parallel_figure(runs, "em")
    parts["parallel"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    compare.context_length_figure(runs, "em")
    parts["context_length"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    compare.question_diffs(runs[0], runs[1], "em")
    parts["questions"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    compare.display_rows(comparison["table"])
    parts["display"] = time.perf_counter() - t1
    parts["total"] = time.perf_counter() - t0
    parts["rows"] = len(comparison["table"])
    return parts


def main() -> None:
    from app import compare
    from memfactory_core.metrics import paired

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        store, ids = make_store(tmp)
        size = sum((Path(store.get_run(i).output_dir) / "results.json").stat().st_size
                   for i in ids)
        print(f"{RUNS} runs x {QUESTIONS * len(DOCS)} records ({size / 1e6:.1f} MB of "
              f"results.json) written in {time.perf_counter() - t0:.1f} s")
        print(f"load: {os.getloadavg()[0]:.2f} (1-min average)")
        cold = build(store, ids, ids[0])
        warm = [build(store, ids, ids[r % 3]) for r in range(ROUNDS)]
        # no reuse at all: parsed results and resample counts dropped each round
        uncached = []
        for _ in range(2):
            compare._results_cache.clear()
            paired._counts_cache.clear()
            uncached.append(build(store, ids, ids[0]))
        keys = ["load", "table", "config_diff", "parallel", "context_length", "questions",
                "display", "total"]
        print(f"\n{'part':<16}{'cold (s)':>10}{'warm median (s)':>18}{'uncached (s)':>14}")
        for k in keys:
            print(f"{k:<16}{cold[k]:>10.3f}{statistics.median(w[k] for w in warm):>18.3f}"
                  f"{statistics.median(u[k] for u in uncached):>14.3f}")
        print(f"table rows: {cold['rows']}")
        runs, comparison = compare.compare_stored_runs(store, ids, ids[0])
        for name, fn in (("csv", lambda: compare.table_csv(comparison["table"])),
                         ("json", lambda: compare.comparison_json(comparison)),
                         ("html report", lambda: compare.report_html(
                             comparison, compare.comparison_figures(runs, "em", store)))):
            t1 = time.perf_counter()
            out = fn()
            print(f"export {name}: {time.perf_counter() - t1:.3f} s ({len(out) / 1e6:.2f} MB)")
        warm_total = statistics.median(w["total"] for w in warm)
        print(f"\ncomparison build (warm): {warm_total:.3f} s -> "
              f"{'meets' if warm_total < 1.0 else 'misses'} the 1 s target "
              f"(ratio {warm_total / 1.0:.2f}); cold, first parse of the files: "
              f"{cold['total']:.3f} s (ratio {cold['total'] / 1.0:.2f})")


if __name__ == "__main__":
    main()
