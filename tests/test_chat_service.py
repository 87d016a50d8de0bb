"""Chat sessions with a memory agent: turns ingested and answered, a memory snapshot per turn
kept in the store, reload, rewind, export, the model shared and refused cleanly."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from app.agent_manager import AgentManager
from app.chat_service import ChatService, pipeline_spec, turn_ops
from jobs.store import RunStore
from memfactory_core.errors import MemFactoryError
from memfactory_core.pipeline import load_spec
from tests.fakes import ScriptedLLM
from tests.test_conversation_runtime import scripted as scripted_manager


def chat_spec(name: str, small: bool = True) -> dict[str, Any]:
    """A shipped preset made light for tests: hashing embedder, small chunks and outputs."""
    spec = copy.deepcopy(load_spec(name))
    assert isinstance(spec, dict)
    params = spec["memory"].setdefault("params", {})
    if "embedder" in params:
        params["embedder"] = "hashing-64"
    for slot in spec["ingest"] + spec["query"]:
        p = slot.setdefault("params", {})
        if slot["component"] == "token_chunker":
            p["chunk_tokens"] = 24
        for key in ("max_new_tokens", "extract_max_new_tokens", "merge_max_new_tokens"):
            if key in p and small:
                p[key] = 8
    return spec


def r1_given_facts() -> dict[str, Any]:
    spec = chat_spec("memory_r1", small=False)
    spec["ingest"][1] = {"component": "given_facts", "params": {"fallback": "turn_text"}}
    return spec


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


def run(events: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"tokens": "", "progress": []}
    for ev in events:
        if ev.kind == "token":
            out["tokens"] += ev.text
        elif ev.kind == "progress":
            out["progress"].append(ev.data)
        else:
            out["done"] = ev
    return out


def test_memory_r1_turns_edit_the_bank_and_persist(store: RunStore) -> None:
    manager = AgentManager(store, loader=lambda name: ScriptedLLM(scripted_manager))
    chat = ChatService(store, manager)
    sid = chat.create_session(r1_given_facts(), "scripted")
    first = run(chat.send(sid, "I live in Oslo."))
    trace = first["done"].data["trace"]
    assert [o["event"] for o in trace["ops"]] == ["ADD"]
    assert trace["ops"][0]["new"] == "User: I live in Oslo."
    assert [e["text"] for e in trace["memory"]["entries"]] == ["User: I live in Oslo."]
    assert first["tokens"].endswith(first["done"].text.split()[-1]) or first["tokens"]
    second = run(chat.send(sid, "I moved to Bergen."))
    ops = second["done"].data["trace"]["ops"]
    assert [(o["event"], o["id"], o["old"], o["new"]) for o in ops] == [
        ("UPDATE", "m1", "User: I live in Oslo.", "User: I moved to Bergen.")]
    assert second["done"].data["trace"]["retrieved"]["retrieved"][0]["score"] is not None
    # a new service over the same store (a restart) continues from the stored memory
    again = ChatService(store, manager)
    third = run(again.send(sid, "I have a cat."))
    entries = third["done"].data["trace"]["memory"]["entries"]
    assert [e["text"] for e in entries] == ["User: I moved to Bergen.", "User: I have a cat."]
    assert [m["role"] for m in again.messages(sid)] == ["user", "assistant"] * 3


def test_rewind_keeps_earlier_turns_and_memory(store: RunStore) -> None:
    manager = AgentManager(store, loader=lambda name: ScriptedLLM(scripted_manager))
    chat = ChatService(store, manager)
    sid = chat.create_session(r1_given_facts(), "scripted")
    for text in ("I live in Oslo.", "I moved to Bergen."):
        run(chat.send(sid, text))
    assert chat.rewind(sid, 1) == 2
    assert chat.last_state(sid)["memory"]["entries"][0]["text"] == "User: I live in Oslo."
    again = run(chat.send(sid, "I have a cat."))
    assert [o["event"] for o in again["done"].data["trace"]["ops"]] == ["ADD"]
    assert again["done"].data["trace"]["turn"] == 2
    with pytest.raises(MemFactoryError, match="has 2 turns, not 5"):
        chat.rewind(sid, 5)
    exported = chat.export(sid)
    assert json.loads(json.dumps(exported))["pipeline"]["name"] == "memory_r1"
    assert len(exported["messages"]) == 4


@pytest.mark.parametrize("preset", ["memory_r1", "rag"])
def test_tiny_random_conversational_agent(store: RunStore, preset: str) -> None:
    chat = ChatService(store)
    sid = chat.create_session(chat_spec(preset), "tiny-random")
    out = run(chat.send(sid, "My sister Mia lives in Rome."))
    trace = out["done"].data["trace"]
    assert out["tokens"], "the answer streamed no tokens"
    assert trace["steps"] and any(s["prompt"] for s in trace["steps"])
    if preset == "rag":
        assert trace["ops"] and all(o["event"] == "ADD" for o in trace["ops"])
    assert chat.messages(sid)[-1]["trace"]["memory"] == trace["memory"]


def test_tiny_random_memagent_reads_a_document_then_answers(store: RunStore) -> None:
    chat = ChatService(store)
    sid = chat.create_session(chat_spec("memagent"), "tiny-random")
    with pytest.raises(MemFactoryError, match="document to read first"):
        run(chat.send(sid, "Who is Mia?"))
    doc = " ".join(f"Sentence {i} says that Mia has {i} apples." for i in range(12))
    read = run(chat.read_document(sid, doc))
    assert len(read["progress"]) >= 2
    assert read["progress"][-1]["done"] == read["progress"][-1]["total"]
    memory = read["done"].data["trace"]["memory"]
    assert isinstance(memory, str)
    answer = run(chat.send(sid, "How many apples has Mia?"))
    assert answer["done"].data["trace"]["previous_memory"] == memory
    assert answer["tokens"]


def test_model_is_loaded_once_and_shared(store: RunStore) -> None:
    loads: list[str] = []

    def loader(name: str) -> ScriptedLLM:
        loads.append(name)
        return ScriptedLLM(scripted_manager)

    manager = AgentManager(store, loader=loader)
    chat = ChatService(store, manager)
    chat.create_session(r1_given_facts(), "m")
    chat.create_session(r1_given_facts(), "m")
    assert loads == ["m"]
    assert manager.status() == [{"model": "m", "describe": "m", "busy": False}]
    assert manager.unload("m") and manager.status() == []


def test_bad_agents_are_refused_and_nothing_stored_is_lost(store: RunStore) -> None:
    manager = AgentManager(store, loader=lambda name: ScriptedLLM(scripted_manager))
    chat = ChatService(store, manager)
    sid = chat.create_session(r1_given_facts(), "scripted")
    run(chat.send(sid, "I live in Oslo."))
    before = chat.messages(sid)
    real = ChatService(store)
    with pytest.raises(MemFactoryError, match="does not answer"):
        real.create_session("memory_r1", "openai:gpt-x@http://127.0.0.1:9/v1")
    # a model folder outside the data roots is not read, whatever it holds
    for folder in ("/etc", "../../../../../etc"):
        with pytest.raises(MemFactoryError, match="outside the data folders"):
            real.create_session("memory_r1", folder)
    with pytest.raises(MemFactoryError, match="not a preset nor a saved pipeline"):
        pipeline_spec(store, "no_such_pipeline")
    with pytest.raises(MemFactoryError, match="the message is empty"):
        chat.send(sid, "   ")
    assert chat.messages(sid) == before
    assert [s["id"] for s in chat.sessions()] == [sid]


def test_adapter_of_another_base_is_refused(tmp_path: Path) -> None:
    from app.agent_manager import load_adapter

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "some-org/another-model", "peft_type": "LORA"}))
    with pytest.raises(MemFactoryError, match="trained on 'some-org/another-model'"):
        load_adapter("tiny-random", folder)


def test_turn_ops_reads_bank_and_text_changes() -> None:
    steps = [{"memory_diff": {"added": [{"id": "m2", "text": "b"}],
                              "updated": [{"id": "m1", "before": "a", "after": "a2"}],
                              "deleted": [{"id": "m3", "text": "c"}]}},
             {"memory_before": "old", "memory_after": "new"},
             {"memory_before": "same", "memory_after": "same"}]
    assert turn_ops(steps) == [
        {"event": "ADD", "id": "m2", "old": None, "new": "b"},
        {"event": "UPDATE", "id": "m1", "old": "a", "new": "a2"},
        {"event": "DELETE", "id": "m3", "old": "c", "new": None},
        {"event": "REWRITE", "id": "text", "old": "old", "new": "new"},
    ]


def test_tiny_random_rmm_writes_memory_at_session_end(store: RunStore) -> None:
    chat = ChatService(store)
    sid = chat.create_session(chat_spec("rmm"), "tiny-random")
    for n, text in enumerate(["I live in Oslo.", "I have a cat named Tom."], 1):
        trace = run(chat.send(sid, text))["done"].data["trace"]
        assert [t["text"] for t in trace["pending"]][-1] == text and len(trace["pending"]) == n
        assert not any(s["component"] == "prospective_reflection" for s in trace["steps"])
    ended = run(chat.end_session(sid))["done"]
    assert "ended" in ended.text and ended.data["trace"]["pending"] == []
    assert [s["component"] for s in ended.data["trace"]["steps"]][:2] == [
        "session_segmenter", "prospective_reflection"]
    assert ended.data["trace"]["session"] == 2
    after = run(chat.send(sid, "Where do I live?"))["done"].data["trace"]
    assert after["pending"][0]["id"] == "D2:1"


def _trained_run(store: RunStore, tmp_path: Path, base_recorded: str | None) -> int:
    """A training run whose latest checkpoint holds a LoRA adapter of tiny-random (its
    config records ``base_recorded`` as the adapter's base when given)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from memfactory_core.llm.models import resolve_model_path

    out = tmp_path / "train_out"
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-random"))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules="all-linear"))
    ckpt = out / "checkpoint-3"
    peft_model.save_pretrained(ckpt)
    (ckpt / "trainer_state.json").write_text("{}")
    if base_recorded is not None:
        cfg = json.loads((ckpt / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = base_recorded
        (ckpt / "adapter_config.json").write_text(json.dumps(cfg))
    run = store.create_run("train", {"model": "tiny-random", "output_dir": str(out)},
                           model="tiny-random")
    return run.id


def test_training_run_checkpoint_loads_as_an_adapter(store: RunStore, tmp_path: Path) -> None:
    from peft import PeftModel

    run_id = _trained_run(store, tmp_path, None)
    chat = ChatService(store)
    sid = chat.create_session(chat_spec("rag"), f"run:{run_id}")
    loaded = chat.manager.load(f"run:{run_id}")
    assert isinstance(loaded.llm.inner.model, PeftModel)
    assert loaded.describe == f"tiny-random + adapter of run {run_id}"
    assert run(chat.send(sid, "I live in Oslo."))["tokens"]


def test_adapter_of_another_base_is_refused_in_a_session(store: RunStore,
                                                          tmp_path: Path) -> None:
    run_id = _trained_run(store, tmp_path, "some-org/another-model")
    chat = ChatService(store)
    with pytest.raises(MemFactoryError, match="trained on 'some-org/another-model'"):
        chat.create_session(chat_spec("rag"), f"run:{run_id}")
    assert chat.sessions() == []
