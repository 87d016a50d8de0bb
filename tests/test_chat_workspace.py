"""A MemAgent chat reads a document from a workspace file: the text files of the workspace's
documents/ and data/ folders are listed (size-limited), read chunk by chunk, and every path
that leads elsewhere (absolute, '..', a link out, hidden, another kind or size) is refused
with a message naming it, with nothing stored; the same through the app's endpoints."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client

from app.agent_manager import AgentManager
from app.chat_service import (
    MAX_DOCUMENT_BYTES,
    ChatService,
    read_workspace_document,
    workspace_documents,
)
from app.ui import build_app
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import memfactory_home
from tests.app_support import api_client
from tests.fakes import ScriptedLLM
from tests.test_chat_app import given_facts
from tests.test_chat_service import chat_spec, run

DOC = " ".join(f"Sentence {i} says that Mia has {i} apples." for i in range(10))


def memagent() -> dict[str, Any]:
    """The MemAgent preset, light: small chunks, short memory writes and answers."""
    spec = chat_spec("memagent")
    spec["ingest"][1]["params"] = {"max_new_tokens": 8}
    return spec


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Any]:
    """Files of every kind in a folder of the workspace's documents/ of this test's own,
    and a link to a file and one to a folder outside the workspace."""
    name = tmp_path.name
    folder = memfactory_home() / "documents" / name
    folder.mkdir(parents=True)
    (folder / "notes.md").write_text(DOC)
    (folder / "big.txt").write_bytes(b"a" * (MAX_DOCUMENT_BYTES + 1))
    (folder / "picture.png").write_bytes(b"\x89PNG")
    (folder / ".env.txt").write_text("SECRET=1")
    (folder / "latin.txt").write_bytes("Caf\xe9".encode("latin-1"))
    (folder / "empty.txt").write_text("  \n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("the server's secret")
    os.symlink(outside / "secret.txt", folder / "link.txt")
    os.symlink(outside, folder / "linked_dir")
    data = memfactory_home() / "data" / name
    data.mkdir(parents=True)
    (data / "facts.jsonl").write_text('{"text": "Mia has 3 apples."}\n')
    return {"rel": f"documents/{name}", "data": f"data/{name}", "outside": outside}


def test_workspace_files_are_listed_and_a_memagent_reads_one(store: RunStore,
                                                             files: dict[str, Any]) -> None:
    listed = workspace_documents()
    rel = files["rel"]
    mine = sorted(p for p in listed if p.startswith(rel + "/"))
    assert mine == [f"{rel}/empty.txt", f"{rel}/latin.txt", f"{rel}/notes.md"]
    assert f"{files['data']}/facts.jsonl" in listed
    chat = ChatService(store)
    sid = chat.create_session(memagent(), "tiny-random")
    read = run(chat.read_workspace_file(sid, f"{rel}/notes.md"))
    assert len(read["progress"]) >= 2
    trace = read["done"].data["trace"]
    assert trace["source"] == f"{rel}/notes.md" and trace["kind"] == "document"
    assert isinstance(trace["memory"], str)
    assert (chat.messages(sid)[0]["role"], chat.messages(sid)[0]["content"]) == ("document", DOC)
    assert run(chat.send(sid, "How many apples has Mia?"))["tokens"]


@pytest.mark.parametrize("ref, message", [
    ("", "choose a file from the workspace's documents/ or data/ folder"),
    ("../outside/secret.txt", "'..' would leave the workspace"),
    ("{rel}/../../../secret.txt", "'..' would leave the workspace"),
    ("{outside}/secret.txt", "give a path relative to the workspace"),
    ("~/secret.txt", "give a path relative to the workspace"),
    ("{rel}/link.txt", "is a link that leads out of the workspace's documents/ or data/"),
    ("{rel}/linked_dir/secret.txt", "is a link that leads out of"),
    ("models/tiny-random/config.json", "is not in the workspace's documents/ or data/ folder"),
    ("memfactory.db", "is not in the workspace's documents/ or data/ folder"),
    ("{rel}/.env.txt", "hidden files and folders are not read"),
    ("{rel}/picture.png", "only .txt, .md, .json, .jsonl files are read"),
    ("{rel}/missing.txt", "no such file in the workspace"),
    ("{rel}/big.txt", f"has {MAX_DOCUMENT_BYTES + 1} bytes; a document has at most"),
    ("{rel}/latin.txt", "is not UTF-8 text (byte 3)"),
    ("{rel}/empty.txt", "empty.txt' is empty"),
])
def test_paths_that_lead_elsewhere_are_refused_and_nothing_is_stored(
        store: RunStore, files: dict[str, Any], ref: str, message: str) -> None:
    ref = ref.format(**files)
    chat = ChatService(store, AgentManager(store, loader=lambda name: ScriptedLLM()))
    sid = chat.create_session(memagent(), "scripted")
    run(chat.read_document(sid, DOC))
    before = chat.messages(sid)
    with pytest.raises(MemFactoryError) as err:
        run(chat.read_workspace_file(sid, ref))
    assert message in str(err.value)
    if ref:
        assert repr(ref) in str(err.value)
    assert "the server's secret" not in str(err.value)
    assert chat.messages(sid) == before


def test_a_conversational_agent_does_not_read_documents(store: RunStore,
                                                        files: dict[str, Any]) -> None:
    chat = ChatService(store, AgentManager(store, loader=lambda name: ScriptedLLM()))
    sid = chat.create_session(given_facts("rag"), "scripted")
    with pytest.raises(MemFactoryError, match="reads conversation turns, not a document"):
        run(chat.read_workspace_file(sid, f"{files['rel']}/notes.md"))
    assert chat.messages(sid) == []
    assert read_workspace_document(f"{files['rel']}/notes.md") == DOC


@pytest.fixture()
def client(tmp_path: Path) -> Iterator[Client]:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    store.save_pipeline("chat_memagent", memagent())
    demo = build_app(store, refresh_s=5.0)
    with api_client(demo) as client:
        yield client


def test_workspace_file_endpoints(client: Client, files: dict[str, Any]) -> None:
    rel = files["rel"]
    listed = client.predict(api_name="/chat_workspace_files")
    assert f"{rel}/notes.md" in listed and f"{rel}/link.txt" not in listed
    sid = client.predict("chat_memagent", "tiny-random", api_name="/chat_new_session")
    with pytest.raises(Exception, match="would leave the workspace"):
        client.predict(sid, "../outside/secret.txt", api_name="/chat_read_workspace_file")
    with pytest.raises(Exception, match="is a link that leads out of"):
        client.predict(sid, f"{rel}/link.txt", api_name="/chat_read_workspace_file")
    assert client.predict(sid, api_name="/chat_messages") == []
    done = client.predict(sid, f"{rel}/notes.md", api_name="/chat_read_workspace_file")
    assert done["reply"].startswith("I read the document")
    assert done["trace"]["source"] == f"{rel}/notes.md"
    messages = client.predict(sid, api_name="/chat_messages")
    assert [m["role"] for m in messages] == ["document", "assistant"]
    assert messages[0]["content"] == DOC
