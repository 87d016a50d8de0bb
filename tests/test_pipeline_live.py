"""Live sessions: a pipeline driven call by call (read a document, add turns, ask, end a
session) writes the memory and gives the answer an evaluation of the same episode gives,
through the runtime's own steps; checkpoints resume; misuse is refused clearly."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from memfactory_core.data.episode import QA, Conversation, Episode, Session, Turn
from memfactory_core.errors import MemFactoryError
from memfactory_core.memory import TopicMemory
from memfactory_core.pipeline import PipelineRuntime, load_spec, validate_spec
from memfactory_core.pipeline.live import LiveSession
from tests.fakes import ScriptedLLM

SESSIONS = [("1 May 2023", [("Ann", "I live in Oslo."), ("Bo", "I have a cat named Tom.")]),
            ("9 June 2023", [("Ann", "I moved to Bergen.")])]
QUESTION = "Where does Ann live?"
EXTRACT = "A session:\n{turns}\n\nList the topics about {speaker}, as JSON."
MERGE = ("A new topic:\n{topic}\n\nMemories already stored:\n{memories}\n\nIf they are "
         "about the same thing, merge them; reply in JSON.")


def conversation() -> Episode:
    sessions = [Session(index=s, time=when, turns=[
        Turn(id=f"D{s}:{n}", speaker=who, text=text, session=s, time=when)
        for n, (who, text) in enumerate(turns, 1)])
        for s, (when, turns) in enumerate(SESSIONS, 1)]
    return Episode(id="c1", conversation=Conversation(speakers=["Ann", "Bo"],
                                                      sessions=sessions),
                   questions=[QA(id="q1", question=QUESTION, answers=["Bergen"])])


def spec_of(preset: str) -> dict[str, Any]:
    spec = copy.deepcopy(load_spec(preset))
    assert isinstance(spec, dict)
    spec["memory"]["params"]["embedder"] = "hashing-64"
    return json_reflection(spec)


def json_reflection(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its prospective reflection (if any) asking for JSON replies with the
    prompts above, no reply prefix and room for whole replies (what the scripted models
    here answer)."""
    for slot in spec["ingest"]:
        if slot["component"] == "prospective_reflection":
            slot.setdefault("params", {}).update(
                extract_template=EXTRACT, merge_template=MERGE,
                extract_reply_prefix="", merge_reply_prefix="", extract_max_new_tokens=400,
                merge_max_new_tokens=200)
    return spec


def rag_spec() -> dict[str, Any]:
    spec = spec_of("rag")
    spec["ingest"][1] = {"component": "given_facts", "params": {"fallback": "turn_text"}}
    return spec


def scripted(text: str) -> str:
    """Reflector: one topic per speaker from the session's turns; merge: always add.
    Answerers: the first memory's last word."""
    if "List the topics" in text:
        speaker = re.search(r"topics about (\w+)", text).group(1)  # type: ignore[union-attr]
        said = re.findall(rf"\[(D\d+:\d+)\][^\n]*{speaker}: ([^\n]*)", text)
        if not said:
            return "NO_TRAIT"
        return json.dumps({"topics": [{"summary": f"{speaker} said: " + " ".join(
            t for _, t in said), "turn_ids": [i for i, _ in said]}]})
    if "merge them" in text:
        return '{"action": "add"}'
    if "<text>" in text:  # MemAgent's memory writer keeps the chunk's first word
        notes = re.search(r"<notes>\n(.*?)\n</notes>", text, re.S).group(1)  # type: ignore
        chunk = re.search(r"<text>\n\s*(\S+)", text).group(1)  # type: ignore[union-attr]
        return (notes.replace("No previous memory.", "") + " " + chunk).strip()
    words = re.findall(r"[A-Z][a-z]+", text.split("Question")[0])
    return f"Answer: {words[-1] if words else 'nothing'} \\boxed{{{words[-1] if words else ''}}}"


def live_conversation(live: LiveSession) -> list[Any]:
    """Feed SESSIONS to ``live`` turn by turn, ending each session; the results."""
    out = []
    for when, turns in SESSIONS:
        for who, text in turns:
            out.append(live.add_turn(who, text, when))
        out.append(live.end_session())
    return out


def entries(memory: Any) -> list[dict[str, Any]]:
    return memory.snapshot()["entries"]


@pytest.mark.parametrize("make_spec", [rag_spec, lambda: spec_of("rmm")],
                         ids=["rag-per-turn", "rmm-per-session"])
def test_live_turns_write_what_an_evaluation_writes(make_spec: Any) -> None:
    spec = validate_spec(make_spec())
    evaluated = PipelineRuntime(spec, ScriptedLLM(scripted)).run([conversation()])[0]
    runtime = PipelineRuntime(spec, ScriptedLLM(scripted))
    live = runtime.live()
    results = live_conversation(live)
    assert entries(live.memory) == entries(evaluated.memory)
    assert entries(live.memory), "the conversation wrote nothing"
    asked = live.ask(QUESTION)
    assert asked.answer == evaluated.answer
    assert [s.component for s in asked.steps] == [s.component for s in evaluated.trace.steps]
    assert asked.retrieved
    ingested = [[t.id for t in r.ingested] for r in results]
    if live.writes_at_session_end:
        # turns wait for their session's end, which ingests them together
        assert ingested == [[], [], ["D1:1", "D1:2"], [], ["D2:1"]]
        assert isinstance(live.memory, TopicMemory)
        assert [s.component for s in results[2].steps] == [
            "session_segmenter", "prospective_reflection"]
    else:
        assert ingested == [["D1:1"], ["D1:2"], [], ["D2:1"], []]
        assert [s.component for s in results[0].steps] == [
            "turn_segmenter", "given_facts", "add_all"]


def test_live_document_reading_matches_an_evaluation() -> None:
    spec = copy.deepcopy(load_spec("memagent"))
    assert isinstance(spec, dict)
    spec["ingest"][0]["params"] = {"chunk_tokens": 40}
    pipeline = validate_spec(spec)
    doc = " ".join(f"Chunk{i} tells that Mia has {i} apples." for i in range(6))
    episode = Episode(id="d1", context=doc,
                      questions=[QA(id="q", question="How many apples?", answers=["5"])])
    evaluated = PipelineRuntime(pipeline, ScriptedLLM(scripted)).run([episode])[0]
    live = PipelineRuntime(pipeline, ScriptedLLM(scripted)).live()
    seen: list[tuple[int, int, str]] = []
    read = live.read_document(doc, lambda done, total, memory: seen.append(
        (done, total, memory.snapshot())), question="How many apples?")
    writes = [s for s in evaluated.steps if s.component == "memory_writer"]
    assert read.units == len(writes) == len(seen) > 1
    assert [(d, t) for d, t, _ in seen] == [(i, len(writes)) for i in range(1, len(writes) + 1)]
    assert [m for _, _, m in seen] == [s.memory_after for s in writes]
    assert live.memory.snapshot() == evaluated.trace.final_memory
    assert live.ask("How many apples?").answer == evaluated.answer


def test_live_calls_go_through_the_runtime_steps_evaluation_uses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    for name in ("segment", "ingest_unit", "run_query"):
        original = getattr(PipelineRuntime, name)

        def spy(self: PipelineRuntime, *args: Any, _n: str = name, _f: Any = original,
                **kwargs: Any) -> Any:
            calls.append(_n)
            return _f(self, *args, **kwargs)

        monkeypatch.setattr(PipelineRuntime, name, spy)
    runtime = PipelineRuntime(validate_spec(rag_spec()), ScriptedLLM(scripted))
    runtime.run([conversation()])
    evaluation = list(calls)
    calls.clear()
    live = runtime.live()
    live_conversation(live)
    live.ask(QUESTION)
    assert evaluation == ["segment", "ingest_unit", "ingest_unit", "ingest_unit", "run_query"]
    assert calls == ["segment", "ingest_unit"] * 3 + ["run_query"]


def test_checkpoint_resumes_memory_session_and_waiting_turns() -> None:
    runtime = PipelineRuntime(validate_spec(spec_of("rmm")), ScriptedLLM(scripted))
    live = runtime.live()
    live.add_turn("Ann", "I live in Oslo.", "1 May 2023")
    live.end_session()
    live.add_turn("Ann", "I moved to Bergen.", "9 June 2023")
    saved = json.loads(json.dumps(live.checkpoint()))
    assert (saved["session"], saved["turn"]) == (2, 1)
    assert [t["id"] for t in saved["pending"]] == ["D2:1"]
    again = runtime.live(saved)
    assert isinstance(again.memory, TopicMemory)
    assert entries(again.memory) == entries(live.memory)
    assert [t.text for t in again.pending] == ["I moved to Bergen."]
    ended = again.end_session()
    assert [t.id for t in ended.ingested] == ["D2:1"]
    assert [e["text"] for e in entries(again.memory)] == [
        "Ann said: I live in Oslo.", "Ann said: I moved to Bergen."]
    assert (again.session, again.turn, again.pending) == (3, 0, [])


def test_a_reranker_shows_what_it_kept_beside_what_was_retrieved() -> None:
    spec = spec_of("rmm_observations")
    spec["query"][1]["params"]["top_m"] = 2
    live = PipelineRuntime(validate_spec(spec), ScriptedLLM(scripted)).live()
    live_conversation(live)
    asked = live.ask(QUESTION)
    retrieved, kept = asked.retrieved["retrieved"], asked.retrieved["retrieved (reranker)"]
    assert len(retrieved) == 3 and len(kept) == 2
    assert {e["id"] for e in kept} <= {e["id"] for e in retrieved}
    assert all("rerank_score" in e for e in kept)


def test_misuse_is_refused_clearly() -> None:
    doc = PipelineRuntime(validate_spec(load_spec("memagent")), ScriptedLLM(scripted)).live()
    with pytest.raises(MemFactoryError, match="reads a document, not conversation turns"):
        doc.add_turn("Ann", "hello")
    with pytest.raises(MemFactoryError, match="the document is empty"):
        doc.read_document("   ")
    conv = PipelineRuntime(validate_spec(rag_spec()), ScriptedLLM(scripted)).live()
    with pytest.raises(MemFactoryError, match="reads conversation turns, not a document"):
        conv.read_document("A document.")
    with pytest.raises(MemFactoryError, match="the question is empty"):
        conv.ask(" ")
    with pytest.raises(MemFactoryError, match="the turn is empty"):
        conv.add_turn("Ann", "")
    assert conv.turn == 0
    with pytest.raises(MemFactoryError, match="live session checkpoint"):
        conv.runtime.live({"pending": [{"text": "no id"}]})
    with pytest.raises(MemFactoryError, match="live session checkpoint"):
        conv.runtime.live({"session": "two"})
