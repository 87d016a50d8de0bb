"""Conversation pipelines end to end with a scripted model: turns streamed through the
extractor and the manager, bank edits recorded as diffs, the ingest trace kept once."""

from __future__ import annotations

import copy
import json
import re

import pytest

from memfactory_core.data.episode import QA, Conversation, Episode, Session, Turn
from memfactory_core.errors import MemFactoryError
from memfactory_core.memory import MemoryBank
from memfactory_core.pipeline import PipelineRuntime, load_spec, validate_spec
from tests.fakes import ScriptedLLM


def conversation_episode(eid: str = "c1") -> Episode:
    t1 = Turn(id="D1:1", speaker="Ann", text="I live in Oslo.", session=1, time="1 May 2023",
              facts=["Ann lives in Oslo."])
    t2 = Turn(id="D1:2", speaker="Bo", text="I have a cat.", session=1, time="1 May 2023",
              facts=["Bo has a cat."])
    t3 = Turn(id="D2:1", speaker="Ann", text="I moved to Bergen.", session=2, time="9 June 2023",
              facts=["Ann lives in Bergen."])
    conv = Conversation(speakers=["Ann", "Bo"], sessions=[
        Session(index=1, time="1 May 2023", turns=[t1, t2]),
        Session(index=2, time="9 June 2023", turns=[t3]),
    ])
    qas = [QA(id=f"{eid}/q0", question="Where does Ann live?", answers=["Bergen"],
              evidence=["D2:1"], category=4),
           QA(id=f"{eid}/q1", question="What pet does Bo have?", answers=["a cat"],
              evidence=["D1:2"], category=4)]
    return Episode(id=eid, conversation=conv, questions=qas)


def memory_r1(embedder: str = "hashing-64", extractor: str = "given_facts") -> dict:
    spec = copy.deepcopy(load_spec("memory_r1"))
    assert isinstance(spec, dict)
    spec["memory"]["params"]["embedder"] = embedder
    if extractor == "given_facts":
        spec["ingest"][1] = {"component": "given_facts"}
    return spec


def scripted(text: str) -> str:
    """Manager: UPDATE the shown Oslo entry when Bergen comes; ADD otherwise.
    Answer agent: copy the first memory and answer with its last word."""
    if "New fact" in text:
        lines = re.search(r"Related memories:\n(.*)\n\nNew fact", text, re.S).group(1)
        shown = [dict(zip(("id", "text"), line.split(": ", 1), strict=True))
                 for line in lines.splitlines() if line != "(none yet)"]
        fact = re.search(r"New fact \(said on [^)]*\): (.*)$", text, re.S).group(1).strip()
        oslo = [m for m in shown if "Oslo" in m["text"]]
        if "Bergen" in fact and oslo:
            return json.dumps({"memory": [{"event": "UPDATE", "id": oslo[0]["id"],
                                           "text": fact}]})
        return json.dumps({"memory": [{"event": "ADD", "text": fact}]})
    first = re.search(r"^- \([^)]*\) (.*)$", text, re.M)
    line = first.group(1) if first else "nothing"
    return f"{line}\nAnswer: {line.rstrip('.').split()[-1]}"


def test_manager_edits_the_bank_and_the_trace_records_diffs() -> None:
    llm = ScriptedLLM(scripted)
    runtime = PipelineRuntime(validate_spec(memory_r1()), llm)
    results = runtime.run([conversation_episode("c1"), conversation_episode("c2")])
    assert len(results) == 4
    # one manager call per turn index (both conversations together) + one answer call
    assert [len(texts) for texts, _ in llm.calls] == [2, 2, 2, 4]
    r = next(r for r in results if r.episode.id == "c1" and r.qa.id == "c1/q0")
    assert r.answer == "Bergen"
    bank = r.memory
    assert isinstance(bank, MemoryBank)
    entry = bank.get("m1")
    assert entry.text == "Ann lives in Bergen." and entry.turn_ids == ["D1:1", "D2:1"]
    assert [v.text for v in entry.history] == ["Ann lives in Oslo."]
    # ingest recorded once per episode, shared by both questions' results
    other = next(x for x in results if x.episode.id == "c1" and x.qa.id == "c1/q1")
    assert r.ingest is other.ingest and r.trace.ingest_id == "c1"
    assert all(s.lane == "query" for s in r.trace.steps)
    manage = [s for s in r.ingest if s.component == "memory_manager"]
    assert [s.memory_diff for s in manage] == [
        {"added": [{"id": "m1", "text": "Ann lives in Oslo.", "speaker": "Ann",
                    "turn_ids": ["D1:1"]}], "updated": [], "deleted": []},
        {"added": [{"id": "m2", "text": "Bo has a cat.", "speaker": "Bo",
                    "turn_ids": ["D1:2"]}], "updated": [], "deleted": []},
        {"added": [], "updated": [{"id": "m1", "before": "Ann lives in Oslo.",
                                   "after": "Ann lives in Bergen."}], "deleted": []},
    ]
    assert manage[2].extra["ops"]["UPDATE"] == 1 and manage[2].extra["malformed"] == 0
    assert manage[2].output[0]["shown"][0] == {"id": "m1", "text": "Ann lives in Oslo."}
    assert all(s.memory_before is None and s.memory_after is None for s in manage)
    retrieve = r.trace.steps_of("retriever")[0]
    assert retrieve.extra["retrieved"][0]["turn_ids"] == ["D1:1", "D2:1"]
    answer = r.trace.steps_of("answer_agent")[0]
    assert answer.extra["marker_found"] and answer.extra["distilled"] == "Ann lives in Bergen."
    # the manager's LLM turns are kept with the ingest, not repeated per question
    assert [t["component"] for t in r.ingest_turns] == ["memory_manager"] * 3
    assert [t["component"] for t in r.turns] == ["answer_agent"]


@pytest.mark.parametrize("reply, reason", [
    ("I think we should add it", "no JSON object"),
    ('{"memory": [{"event": "UPDATE", "id": "m99", "text": "x"}]}', "unknown id 'm99'"),
    ('{"memory": [{"event": "MERGE", "text": "x"}]}', "unknown op 'MERGE'"),
    ('{"memory": [{"event": "ADD"', "invalid JSON"),
])
def test_malformed_manager_replies_are_counted_and_leave_the_bank(reply: str, reason: str
                                                                   ) -> None:
    def answer(text: str) -> str:
        return reply if "New fact" in text else "Answer: x"

    runtime = PipelineRuntime(validate_spec(memory_r1()), ScriptedLLM(answer))
    r = runtime.run([conversation_episode()])[0]
    manage = [s for s in r.ingest if s.component == "memory_manager"]
    assert [s.extra["malformed"] for s in manage] == [1, 1, 1]
    assert all(s.memory_diff is None for s in manage)
    decision = manage[0].output[0]
    assert decision["valid"] is False and decision["raw"] == reply
    assert reason in decision["error"]
    assert r.memory is not None and r.memory.snapshot()["entries"] == []
    assert [t["valid"] for t in r.ingest_turns] == [False, False, False]


def test_rag_adds_every_fact() -> None:
    spec = copy.deepcopy(load_spec("rag"))
    assert isinstance(spec, dict)
    spec["memory"]["params"]["embedder"] = "none"
    spec["ingest"][1] = {"component": "given_facts"}
    spec["query"][0]["params"]["mode"] = "bm25"
    runtime = PipelineRuntime(validate_spec(spec), ScriptedLLM(scripted))
    r = runtime.run([conversation_episode()])[0]
    assert r.memory is not None
    assert [e["text"] for e in r.memory.snapshot()["entries"]] == [
        "Ann lives in Oslo.", "Bo has a cat.", "Ann lives in Bergen."]
    assert r.memory.snapshot()["embedding"] == {"model": None, "dim": None}


def test_document_pipeline_on_a_conversation_episode_is_a_clear_error() -> None:
    runtime = PipelineRuntime(validate_spec(memory_r1()), ScriptedLLM(scripted))
    with pytest.raises(MemFactoryError, match="has no conversation"):
        runtime.run([Episode(id="doc", context="text", questions=[
            QA(id="q", question="?", answers=["x"])])])


def test_session_segmenter_and_llm_extractor_attribute_facts() -> None:
    def reply(text: str) -> str:
        if "worth remembering" in text:
            if "Bergen" in text:
                return "NONE"
            return "- Ann lives in Oslo.\n- Bo has a cat.\nNONE"
        return scripted(text)

    spec = memory_r1(extractor="fact_extractor")
    spec["ingest"][0] = {"component": "session_segmenter"}
    runtime = PipelineRuntime(validate_spec(spec), ScriptedLLM(reply))
    r = runtime.run([conversation_episode()])[0]
    extract = [s for s in r.ingest if s.component == "fact_extractor"]
    assert [s.extra["facts"] for s in extract] == [2, 0]
    assert r.memory is not None
    entries = {e.text: e for e in r.memory.active()}
    assert entries["Bo has a cat."].speaker == "Bo"
    assert entries["Bo has a cat."].turn_ids == ["D1:2"]


def test_retriever_per_speaker_takes_top_k_of_each_speaker() -> None:
    from memfactory_core.components import ComponentContext, Retriever, RolloutState
    from memfactory_core.components.retriever import RetrieverParams
    from memfactory_core.retrieval import HashingEmbedder
    from tests.fakes import CharTokenizer

    bank = MemoryBank(HashingEmbedder(64))
    for i in range(4):
        bank.add(f"Ann went hiking in the hills, trip {i}", "Ann", [f"D1:{i}"])
    bank.add("Bo went to the cinema", "Bo", ["D2:1"])
    ctx = ComponentContext(llm=None, tokenizer=CharTokenizer(), sampling=None)  # type: ignore[arg-type]
    state = RolloutState(id="r", values={"question": "who went hiking?"}, memory=bank)
    plain = Retriever(RetrieverParams(mode="hybrid", top_k=2), ctx, None)
    plain.run([state])
    assert {e["speaker"] for e in state.values["retrieved"]} == {"Ann"}
    each = Retriever(RetrieverParams(mode="hybrid", top_k=2, per_speaker=True), ctx, None)
    each.run([state])
    speakers = [e["speaker"] for e in state.values["retrieved"]]
    assert sorted(speakers) == ["Ann", "Ann", "Bo"]


def test_constrained_manager_on_a_real_model_makes_only_valid_decisions() -> None:
    from memfactory_core.components.memory_manager import reply_choices
    from memfactory_core.llm import load_backend

    spec = memory_r1()
    spec["ingest"][2]["params"].update(constrained=True, reply_prefix='{"event": "')
    runtime = PipelineRuntime(validate_spec(spec), load_backend("tiny-random"))
    r = runtime.run([conversation_episode()])[0]
    manage = [s for s in r.ingest if s.component == "memory_manager"]
    decisions = [d for s in manage for d in s.output]
    assert len(decisions) == 3 and all(d["valid"] for d in decisions)
    for d in decisions:
        assert d["raw"] in reply_choices([e["id"] for e in d["shown"]])
    # an ADD or UPDATE without text stores the fact's own words
    texts = {e["text"] for e in r.memory.snapshot()["entries"]}
    assert texts <= {"Ann lives in Oslo.", "Bo has a cat.", "Ann lives in Bergen."}


def test_a_reply_prefix_that_cannot_start_a_constrained_reply_is_refused() -> None:
    spec = memory_r1()
    spec["ingest"][2]["params"].update(constrained=True, reply_prefix='{"memory": [')
    with pytest.raises(MemFactoryError, match="reply_prefix"):
        validate_spec(spec)


def test_add_and_update_without_text_store_the_facts_words() -> None:
    def answer(text: str) -> str:
        if "New fact" not in text:
            return "Answer: x"
        return '{"event": "UPDATE", "id": "m1"}' if "Bergen" in text.split("New fact")[1] \
            else '{"event": "ADD"}'

    r = PipelineRuntime(validate_spec(memory_r1()), ScriptedLLM(answer)).run(
        [conversation_episode()])[0]
    entry = r.memory.get("m1")
    assert entry.text == "Ann lives in Bergen." and [v.text for v in entry.history] == [
        "Ann lives in Oslo."]
