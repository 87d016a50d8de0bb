"""The memory inspector for RMM's topic memory: a session end shows the topics written from
its turns (summary, source turns, merges), a merge is a MERGE operation, an empty topic
memory says why it is empty, and the session-end reflection's outcome is stated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app.agent_manager import AgentManager
from app.chat_service import ChatService, turn_ops
from app.tabs.chat import inspector_html, memory_html
from jobs.store import RunStore
from tests.fakes import ScriptedLLM
from tests.test_chat_service import chat_spec, run
from tests.test_pipeline_live import json_reflection


def reflector(text: str) -> str:
    """One topic per session from its turns; a topic about a cat merges into the shown one
    about a cat; answers cite the first memory."""
    if "List the topics" in text:
        said = re.findall(r"\[(D\d+:\d+)\][^\n]*User: ([^\n]*)", text)
        return json.dumps({"topics": [{"summary": "User says " + " ".join(t for _, t in said),
                                       "turn_ids": [i for i, _ in said]}]})
    if "merge them" in text:
        shown = re.findall(r"^\[(\d+)\] (.*)$", text, re.M)
        cat = [i for i, line in shown if "cat" in line]
        if cat and "cat" in text.split("Memories already stored")[0]:
            return json.dumps({"action": "merge", "index": int(cat[0]),
                               "summary": "User has a cat named Tom who is now old"})
        return '{"action": "add"}'
    return "Tom [0]"


@pytest.fixture()
def chat(tmp_path: Path) -> ChatService:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    return ChatService(store, AgentManager(store, loader=lambda name: ScriptedLLM(reflector)))


def test_session_end_shows_the_topics_written_and_a_merge(chat: ChatService) -> None:
    sid = chat.create_session(json_reflection(chat_spec("rmm", small=False)), "scripted")
    first = run(chat.send(sid, "I have a cat named Tom."))["done"].data["trace"]
    assert "No topics in memory" in inspector_html(first)
    ended = run(chat.end_session(sid))["done"].data["trace"]
    page = inspector_html(ended)
    assert "<table class='mf-bank mf-topics'>" in page
    assert "User says I have a cat named Tom." in page and "<td>D1:1</td>" in page
    assert "Session-end reflection: 1 topic(s) extracted, 0 unreadable replies." in page
    assert [o["event"] for o in ended["ops"]] == ["ADD"]
    run(chat.send(sid, "My cat is old now."))
    merged = run(chat.end_session(sid))["done"].data["trace"]
    assert [(o["event"], o["id"]) for o in merged["ops"]] == [("MERGE", "m1")]
    page = inspector_html(merged)
    assert [e["text"] for e in merged["memory"]["entries"]] == [
        "User has a cat named Tom who is now old"]
    assert "<ins>Tom who is now old</ins>" in page  # a word diff against the last turn
    assert "+ User says My cat is old now." in page  # what was merged in
    assert "D1:1, D2:1" in page


def test_an_empty_topic_memory_and_unreadable_reflections_are_stated() -> None:
    empty = {"embedding": {"model": "hashing-64", "dim": 64}, "entries": []}
    assert "No topics in memory: topics are written when a session ends" in memory_html(
        empty, None, "TopicMemory")
    assert "The bank is empty." in memory_html(empty, None, "MemoryBank")
    trace = {"memory": empty, "memory_kind": "TopicMemory", "kind": "end_session",
             "steps": [{"component": "prospective_reflection",
                        "extra": {"topics": 0, "malformed": 2}}]}
    page = inspector_html(trace)
    assert "0 topic(s) extracted, 2 unreadable replies (see them in the trace)." in page
    assert "No topics in memory" in page


def test_a_merge_is_a_merge_operation() -> None:
    steps = [{"memory_diff": {"added": [], "deleted": [],
                              "updated": [{"id": "m1", "before": "a", "after": "a+b"},
                                          {"id": "m2", "before": "c", "after": "d"}],
                              "merged": [{"id": "m1", "summary": "b"}]}}]
    assert [(o["event"], o["id"]) for o in turn_ops(steps)] == [("MERGE", "m1"),
                                                               ("UPDATE", "m2")]


def test_tiny_random_session_end_is_shown_clearly(tmp_path: Path) -> None:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    chat = ChatService(store)
    sid = chat.create_session(chat_spec("rmm"), "tiny-random")
    run(chat.send(sid, "I live in Oslo."))
    ended = run(chat.end_session(sid))["done"].data["trace"]
    page = inspector_html(ended)
    assert "Memory now (TopicMemory)" in page
    assert "Session-end reflection:" in page
    topics = ended["memory"]["entries"]
    # an untrained random model rarely writes a readable topic: either way the page says so
    assert ("mf-topics" in page) == bool(topics)
    assert ("No topics in memory" in page) == (not topics)
