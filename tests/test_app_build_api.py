"""The Build tab's named endpoints through gradio_client: the same edits as its buttons,
located validation, YAML, saved versions, a new component class, the served vendored
script, and Try it as a real background run."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gradio_client import Client
from gradio_client.exceptions import AppError

from app import pipeline_drafts as drafts
from app.tabs.build import SORTABLE_JS, static_url
from app.ui import build_app
from jobs.store import RunStore
from tests.app_support import free_port
from tests.test_app_builder import probe_component


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


def serve(store: RunStore, scheduler: Any = None) -> tuple[Any, str]:
    demo = build_app(store, scheduler)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(),
                            prevent_thread_lock=True, quiet=True)
    return demo, url


@pytest.fixture()
def served(store: RunStore) -> Iterator[tuple[Client, str]]:
    demo, url = serve(store)
    try:
        yield Client(url, verbose=False), url
    finally:
        demo.close()


def test_build_memagent_with_the_button_endpoints(served: tuple[Client, str],
                                                  store: RunStore) -> None:
    client, _ = served
    draft = json.dumps(drafts.new_draft("from_api"))
    out = client.predict(draft, "ingest", "memory_writer", None, api_name="/pipeline_add")
    out = client.predict(json.dumps(out["draft"]), "query", "boxed_answerer", None,
                         api_name="/pipeline_add")
    out = client.predict(json.dumps(out["draft"]), "query", "token_chunker", None,
                         api_name="/pipeline_add")
    assert not out["check"]["ok"]
    assert {p["slot"] for p in out["check"]["problems"]} >= {"memory_writer", "token_chunker"}
    out = client.predict(json.dumps(out["draft"]), "token_chunker", "ingest", 0,
                         api_name="/pipeline_move")
    assert out["check"]["ok"], out["check"]
    out = client.predict(json.dumps(out["draft"]), "boxed_answerer",
                         json.dumps({"max_new_tokens": 0}), "policy",
                         api_name="/pipeline_set_params")
    problems = out["check"]["problems"]
    assert [(p["lane"], p["index"], p["slot"], p["param"]) for p in problems] == [
        ("query", 0, "boxed_answerer", "max_new_tokens")]
    out = client.predict(json.dumps(out["draft"]), "boxed_answerer",
                         json.dumps({"max_new_tokens": 64}), "policy",
                         api_name="/pipeline_set_params")
    assert out["check"]["ok"]
    text = client.predict(json.dumps(out["draft"]), api_name="/pipeline_yaml")
    assert yaml.safe_load(text)["ingest"][0]["component"] == "token_chunker"
    again = client.predict(text, api_name="/pipeline_from_yaml")
    assert [s["id"] for s in again["draft"]["ingest"]] == ["token_chunker", "memory_writer"]
    saved = client.predict(json.dumps(out["draft"]), api_name="/save_pipeline")
    assert saved == {"name": "from_api", "version": 1, "valid": True,
                     "file": saved["file"]}
    assert Path(saved["file"]).read_text() == text
    listed = client.predict(api_name="/list_pipelines")
    assert [p["name"] for p in listed] == ["from_api"]
    loaded = client.predict("from_api", None, api_name="/load_pipeline")
    assert loaded["draft"] == out["draft"]
    temp = client.predict(json.dumps(out["draft"]), "memory_writer", api_name="/pipeline_remove")
    assert [s["id"] for s in temp["draft"]["ingest"]] == ["token_chunker"]
    with pytest.raises(AppError, match="no slot 'ghost'"):
        client.predict(json.dumps(out["draft"]), "ghost", api_name="/pipeline_remove")
    with pytest.raises(AppError, match="not valid JSON"):
        client.predict("{nope", api_name="/validate_pipeline")
    with pytest.raises(AppError, match="no saved pipeline"):
        client.predict("missing", None, api_name="/load_pipeline")


def test_a_new_component_class_needs_no_ui_code(store: RunStore) -> None:
    from memfactory_core.components import base

    cls = base.register(probe_component())
    demo, url = serve(store)
    try:
        client = Client(url, verbose=False)
        catalog = client.predict(api_name="/pipeline_catalog")
        entry = next(c for c in catalog["palette"] if c["name"] == "probe_filter")
        assert entry["description"].startswith("Keeps the facts")
        assert {f["name"] for f in entry["fields"]} == {"threshold", "mode", "keep_all",
                                                        "limit", "tags"}
        draft = json.dumps(drafts.preset_draft("memagent"))
        out = client.predict(draft, "ingest", "probe_filter", 1, api_name="/pipeline_add")
        assert out["slot"] == "probe_filter" and out["check"]["ok"], out["check"]
        out = client.predict(json.dumps(out["draft"]), "probe_filter",
                             json.dumps({"threshold": 2, "mode": "fuzzy"}), None,
                             api_name="/pipeline_set_params")
        assert sorted(p["param"] for p in out["check"]["problems"]) == ["mode", "threshold"]
    finally:
        demo.close()
        base._REGISTRY.pop(cls.name, None)


def test_the_app_serves_its_vendored_script_and_nothing_else(served: tuple[Client, str],
                                                             tmp_path: Path) -> None:
    _, url = served
    with urllib.request.urlopen(url.rstrip("/") + static_url(SORTABLE_JS)) as reply:
        assert reply.status == 200
        assert reply.read(64).startswith(b"/*! Sortable 1.15.7 - MIT")
    secret = tmp_path / "db.sqlite"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url.rstrip("/") + static_url(secret))
    assert err.value.code in (403, 404)


def test_try_it_refuses_files_outside_the_samples(served: tuple[Client, str],
                                                  store: RunStore) -> None:
    client, _ = served
    draft = json.dumps(drafts.preset_draft("memagent"))
    with pytest.raises(AppError, match="not a sample"):
        client.predict(draft, "tiny-random", "/etc/passwd", 2, api_name="/try_pipeline")
    assert store.list_runs() == []


@pytest.mark.slow
def test_try_it_runs_in_the_background_and_shows_the_trace(store: RunStore) -> None:
    from jobs.scheduler import Scheduler

    scheduler = Scheduler(store, gpus=[], poll_s=0.2, heartbeat_s=1.0)
    scheduler.start()
    demo, url = serve(store, scheduler)
    try:
        client = Client(url, verbose=False)
        draft = json.dumps(drafts.preset_draft("memagent"))
        run = client.predict(draft, "tiny-random", "", 2, api_name="/try_pipeline")
        assert run["kind"] == "eval" and run["tags"] == ["try"]
        deadline = time.monotonic() + 300
        state = client.predict(run["id"], api_name="/run_trace")
        while not state["final"] and time.monotonic() < deadline:
            time.sleep(0.5)
            state = client.predict(run["id"], api_name="/run_trace")
        assert state["status"] == "succeeded", state
        steps = state["trace"]["steps"]
        assert [s["component"] for s in steps][:2] == ["token_chunker", "memory_writer"]
        assert steps[-1]["component"] == "boxed_answerer"
        writer = steps[1]
        assert writer["memory_before"] != writer["memory_after"]
        assert "<ins>" in state["html"] and "memory_writer" in state["html"]
    finally:
        demo.close()
        scheduler.stop()
