"""The scheduler's concurrency limit, observed on real processes: never more run processes
alive at once than ``max_concurrent``, whether or not more GPUs are free, and the limit is
actually used (runs overlap up to it)."""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jobs.local_executor import LocalExecutor
from jobs.models import ACTIVE_STATUSES, FINAL_STATUSES
from jobs.scheduler import Scheduler
from jobs.store import RunStore

# A stand-in run process: records when it starts and ends, holds for a while, and writes
# its own final status as jobs.entry does.
HOLD_RUN = textwrap.dedent('''
    import json, os, sys, time
    from jobs.store import RunStore

    run_id, url, record, hold = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])

    def note(event):
        with open(record, "a") as f:
            f.write(json.dumps({"run": run_id, "event": event, "t": time.time(),
                                "pid": os.getpid()}) + "\\n")

    note("start")
    time.sleep(hold)
    RunStore(url=url, migrate=False).finish(
        run_id, "succeeded", attempt=int(os.environ["MEMFACTORY_RUN_ATTEMPT"]))
    note("end")
''')


def max_overlap(events: list[dict]) -> int:
    """The most run processes that were between their start and end records at once."""
    points = sorted((e["t"], 1 if e["event"] == "start" else -1) for e in events)
    alive = peak = 0
    for _, change in points:
        alive += change
        peak = max(peak, alive)
    return peak


@pytest.mark.parametrize(("limit", "gpus"), [(2, []), (2, ["0", "1", "2", "3"]),
                                             (1, ["0", "1"])])
def test_never_more_runs_alive_than_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              limit: int, gpus: list[str]) -> None:
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path / "home"))
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    script = tmp_path / "hold_run.py"
    script.write_text(HOLD_RUN)
    record = tmp_path / "events.jsonl"

    def command(run_id: int) -> list[str]:
        return [sys.executable, str(script), str(run_id), store.url, str(record), "2.0"]

    n = 5
    ids = [store.create_run("eval", {}).id for _ in range(n)]
    scheduler = Scheduler(store, LocalExecutor(command=command), max_concurrent=limit,
                          gpus=gpus, poll_s=0.02, heartbeat_s=0.5, grace_s=5.0)
    assert scheduler.max_concurrent == limit
    peak_store = peak_watched = 0
    deadline = time.monotonic() + 180
    try:
        while len(store.list_runs(status=FINAL_STATUSES)) < n:
            assert time.monotonic() < deadline, "the runs did not finish"
            scheduler.tick()
            peak_watched = max(peak_watched, len(scheduler.active_runs))
            peak_store = max(peak_store, len(store.list_runs(status=ACTIVE_STATUSES)))
            time.sleep(0.02)
    finally:
        scheduler.stop(terminate_runs=True)
    events = [json.loads(line) for line in record.read_text().splitlines()]
    assert sorted(e["run"] for e in events if e["event"] == "start") == ids  # each once
    assert {r.status for r in store.list_runs()} == {"succeeded"}
    assert peak_store <= limit and peak_watched <= limit
    assert max_overlap(events) <= limit
    # the runs do overlap up to the limit (the check above is not met by running one at a time)
    assert max_overlap(events) == limit or limit == 1
    if limit == 1:
        starts = sorted(e["t"] for e in events if e["event"] == "start")
        ends = sorted(e["t"] for e in events if e["event"] == "end")
        assert all(s >= e for s, e in zip(starts[1:], ends, strict=False))
