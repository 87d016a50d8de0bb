"""How soon the scheduler notices what happens to a run process, measured side by side.

1. A run process killed by SIGKILL: seconds until its run is failed, against the heartbeat
   period (target: under two periods, i.e. ratio < 2).
2. A cancel request on a run that stops on SIGTERM: seconds until it is cancelled, against
   the grace period after which it would be killed (target: well under it, < 1.5 s here).

Stand-in run processes (sleep until SIGTERM, write their own status) keep the model out of
it. Run with OMP_NUM_THREADS=1 on a shared CPU; the tests assert the behaviour only.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("MEMFACTORY_HOME", os.path.join(tempfile.gettempdir(), "mfhome-bench"))

ROUNDS = 5
HEARTBEAT_S = 0.5
GRACE_S = 10.0

SLEEPER = textwrap.dedent('''
    import os, signal, sys, time
    from jobs.store import RunStore

    run_id, url = int(sys.argv[1]), sys.argv[2]
    store = RunStore(url=url, migrate=False)
    attempt = int(os.environ["MEMFACTORY_RUN_ATTEMPT"])
    term = []
    signal.signal(signal.SIGTERM, lambda *a: term.append(1))
    print("ready", flush=True)
    while not term:
        time.sleep(0.01)
    store.finish(run_id, "cancelled", attempt=attempt)
''')


def _wait(condition, tick, timeout: float = 60.0) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not condition():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("timed out")
        tick()
        time.sleep(0.005)
    return time.monotonic() - t0


def main() -> None:
    from jobs.local_executor import LocalExecutor
    from jobs.models import FINAL_STATUSES
    from jobs.scheduler import Scheduler
    from jobs.store import RunStore

    folder = Path(tempfile.mkdtemp(prefix="mf-sched-bench-"))
    store = RunStore(url=f"sqlite:///{folder}/db.sqlite")
    script = folder / "sleeper.py"
    script.write_text(SLEEPER)
    executor = LocalExecutor(command=lambda run_id: [sys.executable, str(script), str(run_id),
                                                     store.url])
    s = Scheduler(store, executor, gpus=[], poll_s=0.02, heartbeat_s=HEARTBEAT_S,
                  grace_s=GRACE_S)

    def started(run_id: int) -> bool:
        run = store.get_run(run_id)
        log = Path(run.log_path or "")
        return run.status == "running" and log.is_file() and "ready" in log.read_text()

    killed, cancelled = [], []
    try:
        for _ in range(ROUNDS):
            run_id = store.create_run("eval", {}).id
            _wait(lambda run_id=run_id: started(run_id), s.tick)
            os.kill(store.get_run(run_id).pid or 0, signal.SIGKILL)
            killed.append(_wait(lambda run_id=run_id: store.get_run(run_id).status
                                in FINAL_STATUSES, s.tick))
            run_id = store.create_run("eval", {}).id
            _wait(lambda run_id=run_id: started(run_id), s.tick)
            store.request_cancel(run_id)
            cancelled.append(_wait(lambda run_id=run_id: store.get_run(run_id).status
                                   in FINAL_STATUSES, s.tick))
    finally:
        s.stop(terminate_runs=True)
    k, c = statistics.median(killed), statistics.median(cancelled)
    print(f"SIGKILL noticed: median {k:.3f} s over {ROUNDS} (max {max(killed):.3f}); "
          f"{k / HEARTBEAT_S:.2f} heartbeat periods (target < 2)")
    print(f"cancel to cancelled: median {c:.3f} s (max {max(cancelled):.3f}); "
          f"{c / GRACE_S:.3f} of the grace period (target < 1.5 s)")
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
