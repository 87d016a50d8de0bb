"""The run store on PostgreSQL: migrations from an empty database and from the previous
revision, the run life cycle, metrics on the row path, and atomic claims from competing
threads. Each test gets a database of its own, dropped afterwards.

The server comes from ``$MEMFACTORY_TEST_POSTGRES_URL`` (a role that may create databases);
the default is what ``.ci/run`` sets up: role ``memfactory`` with password ``mf%pass`` (a
percent sign on purpose: URLs must be escaped on their way to Alembic) on 127.0.0.1:5432.
Without psycopg or a reachable server every test is skipped, saying why.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from jobs.db import current_revision, downgrade, make_engine, upgrade
from jobs.models import FINAL_STATUSES
from jobs.store import MetricRow, RunStore

DEFAULT_URL = "postgresql+psycopg://memfactory:mf%25pass@127.0.0.1:5432/postgres"
ADMIN_URL = os.environ.get("MEMFACTORY_TEST_POSTGRES_URL", DEFAULT_URL)

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgres]')")


def _server_error() -> str | None:
    try:
        engine = create_engine(ADMIN_URL, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


_ERROR = _server_error()
if _ERROR is not None:
    pytest.skip(f"no PostgreSQL server reachable at "
                f"{make_url(ADMIN_URL).render_as_string(hide_password=True)} ({_ERROR}); "
                "set MEMFACTORY_TEST_POSTGRES_URL or run .ci/run", allow_module_level=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh, empty database (as a URL string, password escaped)."""
    name = f"mf_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tables(url: str) -> set[str]:
    return set(inspect(make_engine(url)).get_table_names())


def test_migrations_from_empty_to_head_and_back(pg_url: str) -> None:
    assert "%25" in pg_url or "%" not in make_url(pg_url).password  # escaped in the URL
    engine = make_engine(pg_url)
    assert current_revision(engine) is None
    upgrade(engine)
    head = current_revision(engine)
    assert head is not None
    assert {"runs", "metrics", "samples", "artifacts", "pipelines"} <= _tables(pg_url)
    downgrade(engine, "base")
    assert _tables(pg_url) == {"alembic_version"}
    RunStore(url=pg_url)  # opening the store migrates to head again
    assert current_revision(make_engine(pg_url)) == head


def test_upgrade_from_the_first_revision_keeps_data(pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO runs (kind, status, config, created_at, backend, attempts, resumable,"
            " tags, summary) VALUES ('eval', 'succeeded', '{\"a\": 1}', 1.0, 'local', 1, false,"
            " '[]', '{}')"))
        conn.execute(text("INSERT INTO metrics (run_id, step, name, value, time)"
                          " VALUES (1, 0, 'em', 0.5, 1.0)"))
    store = RunStore(url=pg_url)
    assert current_revision(store.engine) not in (None, "0001")
    run = store.get_run(1)
    assert run.config == {"a": 1} and run.status == "succeeded"
    assert store.last_metrics(1) == {"em": 0.5}


def test_life_cycle_metrics_samples_artifacts(pg_url: str) -> None:
    store = RunStore(url=pg_url)
    assert not store.json_series  # PostgreSQL reads metric rows
    run = store.create_run("train", {"x": 1}, name="a", resumable=True)
    claimed = store.claim_next("w1")
    assert claimed is not None and claimed.id == run.id and claimed.status == "starting"
    assert store.mark_running(run.id, pid=4321)
    assert store.heartbeat(run.id) is False
    now = time.time()
    store.add_metrics(run.id, [MetricRow(s, n, s * 0.1, now) for s in (1, 2, 3)
                               for n in ("reward", "kl")])
    store.add_metrics(run.id, [MetricRow(3, "reward", 0.9, now + 1)])  # a resumed step 3
    assert store.metrics(run.id)[run.id]["reward"] == ([1, 2, 3], [0.1, 0.2, 0.9])
    assert store.best_metric([run.id]) == {run.id: 0.9}
    store.add_samples(run.id, [{"step": 2, "prediction": "ü ✓"}], kind="trajectory")
    assert [s.data["prediction"] for s in store.samples(run.id, step=2)] == ["ü ✓"]
    store.add_artifact(run.id, "checkpoint", "/x/checkpoint-2", step=2)
    assert [(a.kind, a.step) for a in store.artifacts(run.id)] == [("checkpoint", 2)]
    assert store.request_cancel(run.id) == "running"
    assert store.heartbeat(run.id) is True
    assert store.finish(run.id, "cancelled")
    assert not store.finish(run.id, "failed", error="late")
    assert store.get_run(run.id).status == "cancelled"
    assert store.requeue(run.id, "x") is False  # a final run stays final


def test_claims_from_competing_threads_are_unique(pg_url: str) -> None:
    store = RunStore(url=pg_url)
    ids = [store.create_run("eval", {}).id for _ in range(60)]
    claimed: list[int] = []
    barrier = threading.Barrier(4)

    def claim(worker: str) -> None:
        own = RunStore(url=pg_url, migrate=False)
        barrier.wait()
        while (run := own.claim_next(worker)) is not None:
            claimed.append(run.id)
            own.finish(run.id, "succeeded")

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids  # every run claimed, none twice
    assert len(store.list_runs(status=FINAL_STATUSES)) == 60
    assert len({r.worker for r in store.list_runs()}) >= 2  # they really competed
