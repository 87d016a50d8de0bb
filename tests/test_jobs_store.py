"""The run store: migrations, run life cycle, metrics, samples, artifacts, pipelines."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from jobs.db import current_revision, downgrade, make_engine, upgrade
from jobs.store import MetricRow, RunNotFound, RunStore
from jobs.submit import submit_run
from memfactory_core.errors import MemFactoryError, ValidationError


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    """A store with its own workspace, so run folders of other tests cannot collide with it."""
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path / "home"))
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


def _tables(url: str) -> set[str]:
    return set(inspect(make_engine(url)).get_table_names())


def test_migrations_from_empty_and_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.sqlite"
    engine = make_engine(url)
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == "0002"
    assert {"runs", "metrics", "samples", "artifacts", "pipelines", "chat_sessions",
            "chat_messages"} <= _tables(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    downgrade(engine, "base")
    assert _tables(url) == {"alembic_version"}


def test_upgrade_from_previous_revision_keeps_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.sqlite"
    engine = make_engine(url)
    upgrade(engine, "0001")
    assert "chat_sessions" not in _tables(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO runs (kind, status, config, created_at, backend, attempts, resumable,"
            " tags, summary) VALUES ('eval', 'succeeded', '{\"a\": 1}', 1.0, 'local', 1, 0,"
            " '[]', '{}')"))
        conn.execute(text("INSERT INTO metrics (run_id, step, name, value, time)"
                          " VALUES (1, 0, 'em', 0.5, 1.0)"))
    store = RunStore(url=url)  # opening the store migrates to head
    assert current_revision(store.engine) == "0002"
    run = store.get_run(1)
    assert run.config == {"a": 1} and run.status == "succeeded"
    assert store.last_metrics(1) == {"em": 0.5}


def test_life_cycle_claim_heartbeat_cancel_finish(store: RunStore) -> None:
    a = store.create_run("train", {"x": 1}, name="a", resumable=True)
    b = store.create_run("eval", {"x": 2}, name="b")
    assert a.output_dir and a.output_dir.endswith(f"runs/{a.id}")
    assert a.log_path == str(Path(a.output_dir) / "run.log")
    claimed = store.claim_next("w1")
    assert claimed is not None and claimed.id == a.id and claimed.status == "starting"
    assert claimed.attempts == 1 and claimed.worker == "w1"
    assert store.mark_running(a.id, pid=4321)
    assert not store.mark_running(a.id, pid=1)  # only a starting run becomes running
    assert store.get_run(a.id).pid == 4321
    assert store.heartbeat(a.id) is False
    assert store.request_cancel(a.id) == "running"
    assert store.heartbeat(a.id) is True
    assert store.finish(a.id, "cancelled")
    assert not store.finish(a.id, "failed", error="late")  # a final status is never replaced
    assert store.get_run(a.id).status == "cancelled"
    # a queued run is cancelled at once and never claimed
    assert store.request_cancel(b.id) == "cancelled"
    assert store.claim_next("w1") is None
    with pytest.raises(RunNotFound, match="no run with id 999"):
        store.request_cancel(999)


def test_requeue_and_filters(store: RunStore) -> None:
    r = store.create_run("train", {}, resumable=True)
    store.claim_next("w")
    store.mark_running(r.id, pid=1)
    assert store.requeue(r.id, "worker lost")
    again = store.claim_next("w2")
    assert again is not None and again.attempts == 2 and again.error is None
    store.create_run("eval", {})
    assert [x.kind for x in store.list_runs()] == ["eval", "train"]
    assert [x.id for x in store.list_runs(status="starting")] == [r.id]
    assert len(store.list_runs(kind="eval")) == 1
    with pytest.raises(MemFactoryError, match="run kind 'bogus'"):
        store.create_run("bogus", {})


@pytest.mark.parametrize("json_series", [True, False], ids=["json-arrays", "rows"])
def test_metrics_samples_artifacts(store: RunStore, json_series: bool) -> None:
    store.json_series = json_series  # the rows path is what PostgreSQL and others use
    r = store.create_run("train", {})
    now = time.time()
    rows = [MetricRow(step, name, step * 0.1, now) for step in range(1, 4)
            for name in ("reward", "kl")]
    assert store.add_metrics(r.id, rows) == 6
    # a resumed run logs step 3 again: the latest value wins
    store.add_metrics(r.id, [MetricRow(3, "reward", 0.9, now + 1)])
    series = store.metrics(r.id)[r.id]
    assert series["reward"] == ([1, 2, 3], [0.1, 0.2, 0.9])
    assert store.metric_names(r.id) == ["kl", "reward"]
    assert store.best_metric([r.id, 12345]) == {r.id: 0.9, 12345: None}
    assert store.metrics(r.id, names=["kl"])[r.id].keys() == {"kl"}
    store.add_samples(r.id, [{"step": 2, "prediction": "x"}], kind="trajectory")
    store.add_samples(r.id, [{"q": 1}, {"q": 2}], kind="eval_record", step=0)
    assert [s.data["prediction"] for s in store.samples(r.id, step=2)] == ["x"]
    assert len(store.samples(r.id, kind="eval_record")) == 2
    assert store.sample_steps(r.id) == [0, 2]
    store.add_artifact(r.id, "checkpoint", "/x/checkpoint-2", step=2)
    assert [(a.kind, a.step) for a in store.artifacts(r.id)] == [("checkpoint", 2)]
    with pytest.raises(MemFactoryError, match="cancel it first"):
        store.delete_run(r.id)
    store.finish(r.id, "succeeded")
    store.delete_run(r.id)
    assert store.metrics(r.id)[r.id] == {} and store.samples(r.id) == []


def test_pipelines_create_and_replace(store: RunStore) -> None:
    store.save_pipeline("mine", {"memory": {"kind": "text"}})
    store.save_pipeline("mine", {"memory": {"kind": "bank"}})
    assert [p.name for p in store.list_pipelines()] == ["mine"]
    found = store.get_pipeline("mine")
    assert found is not None and found.spec == {"memory": {"kind": "bank"}}


def test_submit_validates_before_queueing_and_keeps_data(store: RunStore,
                                                         tmp_path: Path) -> None:
    kept = submit_run(store, "eval", "assets/configs/eval_memagent_tiny.yaml", ["data.limit=2"])
    assert Path(kept.config["data"]["path"]).is_absolute()
    assert kept.config["output_dir"] == kept.output_dir
    with pytest.raises(ValidationError) as err:
        submit_run(store, "train", "assets/configs/train_synthetic_tiny.yaml",
                   ["learning_rate=-1", "max_stepz=3"])
    message = str(err.value)
    assert "learning_rate" in message and "max_stepz" in message
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: memagent\nmodel: [unclosed\n", encoding="utf-8")
    with pytest.raises(MemFactoryError, match=r"bad\.yaml: not valid YAML"):
        submit_run(store, "eval", bad)
    # nothing was queued by the failures, and the earlier run is intact
    assert [r.id for r in store.list_runs()] == [kept.id]
    assert store.get_run(kept.id).config == kept.config


def test_database_path_with_url_escapes(tmp_path: Path) -> None:
    odd = tmp_path / "50% done, really"
    store = RunStore(url=f"sqlite:///{odd}.sqlite")
    assert store.create_run("eval", {}).id == 1
    assert Path(f"{odd}.sqlite").is_file()


def test_wrong_database_url_is_a_clear_error() -> None:
    with pytest.raises(MemFactoryError, match="not a database URL"):
        RunStore(url="not a url at all")


def test_a_new_run_never_reuses_a_run_folder_that_holds_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path / "home"))
    first = RunStore(url=f"sqlite:///{tmp_path}/a.db").create_run("eval", {"x": 1})
    Path(first.output_dir).mkdir(parents=True)
    (Path(first.output_dir) / "results.json").write_text("{}")
    # another store of the same workspace numbers its runs from 1 again
    second = RunStore(url=f"sqlite:///{tmp_path}/b.db").create_run("eval", {"x": 1})
    assert second.id == first.id
    assert Path(second.output_dir) != Path(first.output_dir)
    assert Path(second.output_dir).name == f"{second.id}-2"
    assert (Path(first.output_dir) / "results.json").read_text() == "{}"
