"""A run process that runs out of memory, for real: the real run entry point under an
address-space limit (``RLIMIT_AS``) set before it starts, on a training config whose LoRA
adapter cannot fit. The run fails with the allocation error's traceback in its log and its
error; the scheduler that launched it goes on to run the next run."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jobs.local_executor import LocalExecutor
from jobs.models import FINAL_STATUSES
from jobs.scheduler import Scheduler
from jobs.store import RunStore
from jobs.submit import submit_run
from memfactory_core.paths import ASSETS_DIR

pytestmark = pytest.mark.slow

REPO = ASSETS_DIR.parent
HEADROOM_MB = 512

# jobs.entry with everything it imports already mapped, then at most HEADROOM_MB more
# address space: the adapter below needs several GB, so the first big allocation fails.
LIMITED_ENTRY = textwrap.dedent(f'''
    import ctypes, resource, sys
    import peft, torch, transformers  # noqa: F401
    import jobs.entry, jobs.sink, memfactory_core.training.trainer  # noqa: F401

    ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX=1: no 64 MB arena reserved per thread
    with open("/proc/self/status") as f:
        size_kb = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
    limit = size_kb * 1024 + {HEADROOM_MB} * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(f"address space limited to {{limit >> 20}} MB", flush=True)
    sys.exit(jobs.entry.main(sys.argv[1:]))
''')


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shared_models = Path(os.environ["MEMFACTORY_HOME"]) / "models"
    shared_models.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "home"
    path.mkdir()
    (path / "models").symlink_to(shared_models, target_is_directory=True)
    monkeypatch.setenv("MEMFACTORY_HOME", str(path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return path


def test_out_of_memory_fails_the_run_with_its_traceback(tmp_path: Path, home: Path) -> None:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    # ~3.5 GB of LoRA weights on tiny-random: far past the headroom, whatever the machine
    hungry = submit_run(store, "train", str(ASSETS_DIR / "configs" / "train_synthetic_tiny.yaml"),
                        ["lora.r=400000", "lora.alpha=16", "max_steps=2"], base_dir=REPO)
    after = submit_run(store, "eval", str(ASSETS_DIR / "configs" / "eval_memagent_tiny.yaml"),
                       ["data.limit=1", "data.docs=2"], base_dir=REPO)
    script = tmp_path / "limited_entry.py"
    script.write_text(LIMITED_ENTRY)

    def command(run_id: int) -> list[str]:
        if run_id == hungry.id:
            return [sys.executable, str(script), str(run_id)]
        return [sys.executable, "-m", "jobs.entry", str(run_id)]

    scheduler = Scheduler(store, LocalExecutor(command=command), gpus=[], poll_s=0.1,
                          heartbeat_s=1.0, grace_s=30.0)
    deadline = time.monotonic() + 600
    try:
        while store.get_run(after.id).status not in FINAL_STATUSES:
            assert time.monotonic() < deadline, "the runs did not finish"
            scheduler.tick()
            time.sleep(0.1)
    finally:
        scheduler.stop(terminate_runs=True)

    run = store.get_run(hungry.id)
    log = Path(run.log_path or "").read_text()
    assert "address space limited to" in log  # it did run under the limit
    assert run.status == "failed", (run.status, run.error, log[-3000:])
    assert "Traceback (most recent call last)" in log
    assert "can't allocate memory" in log or "MemoryError" in log, log[-3000:]
    assert run.error is not None and "Traceback" in run.error
    assert "can't allocate memory" in run.error or "MemoryError" in run.error
    # the scheduler was not taken down with it: the next run ran
    assert store.get_run(after.id).status == "succeeded", store.get_run(after.id).error
