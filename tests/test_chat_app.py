"""The chat endpoints through gradio_client: start a session, send turns, read the stored
messages, rewind, export; a bad model is refused with a clear message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from app.ui import build_app
from jobs.store import RunStore
from tests.app_support import api_client
from tests.test_chat_service import chat_spec


def given_facts(preset: str) -> dict[str, Any]:
    """A shipped preset, light, that stores each user message as its fact."""
    spec = chat_spec(preset)
    spec["ingest"][1] = {"component": "given_facts", "params": {"fallback": "turn_text"}}
    return spec


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[tuple[Client, RunStore]]:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    store.save_pipeline("chat_rag", given_facts("rag"))
    demo = build_app(store, refresh_s=5.0)
    with api_client(demo) as client:
        yield client, store


def test_chat_endpoints_keep_turns_and_rewind(client: tuple[Client, RunStore]) -> None:
    api, _ = client
    sid = api.predict("chat_rag", "tiny-random", api_name="/chat_new_session")
    first = api.predict(sid, "My sister Mia lives in Rome.", api_name="/chat_send")
    assert [o["event"] for o in first["trace"]["ops"]] == ["ADD"]
    assert first["trace"]["ops"][0]["new"] == "User: My sister Mia lives in Rome."
    second = api.predict(sid, "Her dog is called Rex.", api_name="/chat_send")
    assert [e["text"] for e in second["trace"]["memory"]["entries"]] == [
        "User: My sister Mia lives in Rome.", "User: Her dog is called Rex."]
    messages = api.predict(sid, api_name="/chat_messages")
    assert [m["role"] for m in messages] == ["user", "assistant"] * 2
    assert api.predict(sid, 1, api_name="/chat_rewind") == 2
    exported = api.predict(sid, api_name="/chat_export")
    assert len(exported["messages"]) == 2
    assert [e["text"] for e in exported["messages"][-1]["trace"]["memory"]["entries"]] == [
        "User: My sister Mia lives in Rome."]


def test_bad_model_is_refused_and_sessions_are_kept(client: tuple[Client, RunStore]) -> None:
    api, _ = client
    sid = api.predict("chat_rag", "tiny-random", api_name="/chat_new_session")
    api.predict(sid, "I live in Oslo.", api_name="/chat_send")
    with pytest.raises(Exception, match="does not answer"):
        api.predict("chat_rag", "openai:gpt-x@http://127.0.0.1:9/v1",
                    api_name="/chat_new_session")
    with pytest.raises(Exception, match="unknown model 'no_such_model'"):
        api.predict("chat_rag", "no_such_model", api_name="/chat_new_session")
    assert len(api.predict(sid, api_name="/chat_messages")) == 2
