"""RMM's topic memory and prospective reflection: Add / Merge with history, per-speaker topic
extraction with turn ids (JSON or one topic per line, ids inferred when omitted), malformed
replies counted and kept in the trace."""

from __future__ import annotations

import copy
import json

import pytest

from memfactory_core.components.reflection import (
    JSON_EXTRACT_TEMPLATE,
    JSON_MERGE_TEMPLATE,
    MalformedReply,
    parse_merge,
    parse_topics,
)
from memfactory_core.data.episode import QA, Conversation, Episode, Session, Turn
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import Generation, Prompt, SamplingParams
from memfactory_core.memory import TopicMemory
from memfactory_core.pipeline import PipelineRuntime, load_spec, validate_spec
from memfactory_core.retrieval.embedders import load_embedder
from tests.fakes import ScriptedLLM


def test_topic_memory_merge_keeps_history_and_what_was_merged() -> None:
    mem = TopicMemory(load_embedder("hashing-64"))
    a = mem.add_topic("Ann lives in Oslo", "Ann", ["D1:1"], "1 May")
    mark = mem.mark()
    mem.merge(a.id, "Ann moved to Bergen", "Ann lived in Oslo and moved to Bergen",
              ["D2:1"], "9 June")
    entry = mem.get(a.id)
    assert entry.text == "Ann lived in Oslo and moved to Bergen"
    assert entry.turn_ids == ["D1:1", "D2:1"]
    assert [v.text for v in entry.history] == ["Ann lives in Oslo"]
    assert entry.merged[0].summary == "Ann moved to Bergen"
    assert entry.merged[0].before == "Ann lives in Oslo"
    diff = mem.diff(mark)
    assert diff["merged"][0]["id"] == a.id and diff["merged"][0]["turn_ids"] == ["D2:1"]
    assert diff["updated"][0]["after"] == entry.text
    # the summary is the retrieval key
    assert mem.search("Bergen", 1, "bm25")[0][0].id == a.id


def test_topic_memory_clone_and_snapshot_round_trip() -> None:
    emb = load_embedder("hashing-64")
    mem = TopicMemory(emb)
    a = mem.add_topic("Bo has a cat", "Bo", ["D1:2"])
    twin = mem.clone()
    assert isinstance(twin, TopicMemory)
    twin.merge(a.id, "Bo's cat is Tom", "Bo has a cat named Tom", ["D3:1"])
    assert mem.get(a.id).text == "Bo has a cat" and not mem.get(a.id).merged
    back = TopicMemory.from_snapshot(twin.snapshot(), emb)
    assert back.get(a.id).merged[0].summary == "Bo's cat is Tom"
    assert back.add_topic("x", "Bo").id == "m2"
    with pytest.raises(MemFactoryError, match="dimensions"):
        TopicMemory.from_snapshot(twin.snapshot(), load_embedder("hashing-32"))


def test_parse_topics_and_merge_decisions() -> None:
    ids = ["D1:1", "D1:2"]
    assert parse_topics("NO_TRAIT", ids) == []
    topics = parse_topics('{"topics": [{"summary": "Ann lives in Oslo", '
                          '"turn_ids": ["D1:1", "D9:9"]}]}', ids)
    assert topics[0].turn_ids == ["D1:1"] and topics[0].dropped_turn_ids == ["D9:9"]
    for bad, reason in [("hello", "no topic sentence"), ("{ hello", "invalid JSON"),
                        ('{"topics": [{"turn_ids": ["D1:1"]}]}',
                                                 "no summary"),
                        ('{"topics": [{"summary": "x", "turn_ids": ["D7:1"]}]}',
                         "none of its turn ids")]:
        with pytest.raises(MalformedReply, match=reason):
            parse_topics(bad, ids)
    assert parse_merge('{"action": "add"}', 2).action == "add"
    d = parse_merge('{"action": "merge", "index": 1, "summary": "both"}', 2)
    assert (d.index, d.summary) == (1, "both")
    with pytest.raises(MalformedReply, match="out of range"):
        parse_merge('{"action": "merge", "index": 5, "summary": "s"}', 2)
    with pytest.raises(MalformedReply, match="unknown action"):
        parse_merge('{"action": "update"}', 2)


def two_session_episode() -> Episode:
    s1 = [Turn(id="D1:1", speaker="Ann", text="I live in Oslo.", session=1, time="1 May"),
          Turn(id="D1:2", speaker="Bo", text="Nice weather.", session=1, time="1 May")]
    s2 = [Turn(id="D2:1", speaker="Ann", text="I moved to Bergen.", session=2, time="9 June"),
          Turn(id="D2:2", speaker="Bo", text="I got a cat.", session=2, time="9 June")]
    conv = Conversation(speakers=["Ann", "Bo"], sessions=[
        Session(index=1, time="1 May", turns=s1), Session(index=2, time="9 June", turns=s2)])
    return Episode(id="c1", conversation=conv, questions=[
        QA(id="c1/q0", question="Where does Ann live?", answers=["Bergen"],
           evidence=["D2:1"])])


def scripted_reflector(text: str) -> str:
    if "tells about Ann" in text and "[D1:1]" in text and "[D2:1]" not in text:
        return '{"topics": [{"summary": "Ann lives in Oslo", "turn_ids": ["D1:1"]}]}'
    if "tells about Bo" in text and "[D1:2]" in text:
        return "NO_TRAIT"
    if "tells about Ann" in text:
        return '{"topics": [{"summary": "Ann moved to Bergen", "turn_ids": ["D2:1"]}]}'
    if "tells about Bo" in text:
        return "Cat."  # malformed: neither JSON nor a sentence
    if "Ann moved to Bergen" in text and "[0] Ann lives in Oslo" in text:
        return '{"action": "merge", "index": 0, "summary": "Ann moved from Oslo to Bergen"}'
    if "A new topic summary" in text:
        return '{"action": "merge", "index": 3, "summary": "?"}'
    # citing generator
    return "Bergen [0] [7]"


def rmm_spec(json_replies: bool = True) -> dict:
    """The rmm preset on hashing embeddings; ``json_replies``: with the JSON prompts, no reply
    prefixes, memories numbered from 0 and room for whole JSON replies (the scripted replies
    below are JSON)."""
    spec = copy.deepcopy(load_spec("rmm"))
    assert isinstance(spec, dict)
    spec["memory"]["params"]["embedder"] = "hashing-64"
    if json_replies:
        spec["ingest"][1]["params"].update(
            extract_template=JSON_EXTRACT_TEMPLATE, merge_template=JSON_MERGE_TEMPLATE,
            extract_reply_prefix="", merge_reply_prefix="", first_number=0,
            extract_max_new_tokens=400, merge_max_new_tokens=200)
    return spec


def test_prospective_reflection_adds_merges_and_counts_malformed() -> None:
    llm = ScriptedLLM(scripted_reflector)
    runtime = PipelineRuntime(validate_spec(rmm_spec()), llm)
    [res] = runtime.run([two_session_episode()])
    memory = res.memory
    assert isinstance(memory, TopicMemory)
    [topic] = memory.topics()
    assert topic.text == "Ann moved from Oslo to Bergen"
    assert topic.turn_ids == ["D1:1", "D2:1"] and topic.speaker == "Ann"
    assert topic.merged[0].summary == "Ann moved to Bergen"
    steps = [s for s in res.ingest if s.component == "prospective_reflection"]
    assert len(steps) == 2  # one per session
    first, second = steps
    assert first.extra["ops"] == {"ADD": 1, "MERGE": 0} and first.extra["no_trait"] == 1
    assert first.extra["malformed"] == 0
    assert first.memory_diff["added"][0]["text"] == "Ann lives in Oslo"
    assert second.extra["ops"] == {"ADD": 0, "MERGE": 1}
    assert second.extra["malformed"] == 1
    bad = [e for e in second.output["extractions"] if not e["valid"]]
    assert bad[0]["raw"] == "Cat." and "no topic sentence" in bad[0]["error"]
    assert second.memory_diff["merged"][0]["summary"] == "Ann moved to Bergen"
    # the query lane: retriever, reranker, citing generator with an out-of-range citation
    query = {s.component: s for s in res.trace.steps}
    assert query["reranker"].extra["retrieved"][0]["id"] == topic.id
    gen = query["citing_generator"].extra
    assert gen["citations"] == [0] and gen["out_of_range"] == [7]
    assert gen["cited_ids"] == [topic.id] and res.answer == "Bergen"


def test_malformed_merge_decision_falls_back_to_add_and_is_kept() -> None:
    def reply(text: str) -> str:
        if "tells about Ann" in text and "[D2:1]" not in text:
            return '{"topics": [{"summary": "Ann lives in Oslo", "turn_ids": ["D1:1"]}]}'
        if "tells about Ann" in text:
            return '{"topics": [{"summary": "Ann moved to Bergen", "turn_ids": ["D2:1"]}]}'
        if "tells about" in text:
            return "NO_TRAIT"
        if "A new topic summary" in text:
            return '{"action": "merge", "index": 4, "summary": "x"}'
        return "no idea"

    runtime = PipelineRuntime(validate_spec(rmm_spec()), ScriptedLLM(reply))
    [res] = runtime.run([two_session_episode()])
    memory = res.memory
    assert isinstance(memory, TopicMemory)
    assert sorted(t.text for t in memory.topics()) == ["Ann lives in Oslo",
                                                       "Ann moved to Bergen"]
    step = [s for s in res.ingest if s.component == "prospective_reflection"][1]
    [decision] = step.output["decisions"]
    assert decision["valid"] is False and "out of range" in decision["error"]
    assert decision["action"] == "add" and step.extra["malformed"] == 1
    json.dumps(step.output)  # the trace record is JSON-able


def test_rmm_preset_validates_and_reranker_needs_retrieved_memories() -> None:
    spec = validate_spec(rmm_spec())
    assert [s.cls.name for s in spec.query] == ["topic_retriever", "reranker",
                                                "citing_generator"]
    assert spec.roles == ["reflector", "generator"]
    bad = rmm_spec()
    bad["query"] = [s for s in bad["query"] if s["component"] != "topic_retriever"]
    with pytest.raises(MemFactoryError, match="retrieved"):
        validate_spec(bad)


def test_reply_prefixes_start_the_replies_and_are_part_of_what_is_parsed() -> None:
    def reply(text: str) -> str:  # the scripted model sees the open assistant message
        if text == '{"topics": [{"summary": "':
            return 'Ann lives somewhere", "turn_ids": ["D1:1", "D2:1"]}]}'
        if text == '{"action": "':
            return 'merge", "index": 0, "summary": "Ann lives in Bergen now"}'
        return "Bergen [0]"

    spec = rmm_spec()
    spec["ingest"][1]["params"].update(extract_reply_prefix='{"topics": [{"summary": "',
                                       merge_reply_prefix='{"action": "')
    llm = ScriptedLLM(reply)
    [res] = PipelineRuntime(validate_spec(spec), llm).run([two_session_episode()])
    memory = res.memory
    assert isinstance(memory, TopicMemory)
    # session 1: Ann's and Bo's topics (D2:1 is not in session 1, so dropped): the first is
    # added, the second merged into it; session 2 merges both again
    [topic] = memory.topics()
    assert topic.text == "Ann lives in Bergen now" and len(topic.merged) == 3
    first = next(s for s in res.ingest if s.component == "prospective_reflection")
    assert first.output["extractions"][0]["raw"].startswith('{"topics": [{"summary": "Ann')
    assert first.output["extractions"][0]["topics"][0]["dropped_turn_ids"] == ["D2:1"]
    assert first.extra["malformed"] == 0


def test_eval_rmm_tiny_config_runs_and_reports_reflection(tmp_path) -> None:
    from typer.testing import CliRunner

    from app.cli import app
    from memfactory_core.paths import ASSETS_DIR

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(ASSETS_DIR / "configs" / "eval_rmm_tiny.yaml"),
                                      "data.conversations=[sample-1]", f"output_dir={out}"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    steps = results["episodes"]["sample-1"]["steps"]
    reflections = [s for s in steps if s["component"] == "prospective_reflection"]
    assert len(reflections) == 3  # one per session of the sample conversation
    extractions = [e for s in reflections for e in s["output"]["extractions"]]
    assert len(extractions) == 6  # two speakers per session
    malformed = sum(s["extra"]["malformed"] for s in reflections)
    assert summary["memory"]["malformed"] == malformed
    assert all(("error" in e) != e["valid"] for e in extractions)
    assert {"locomo_f1", "bleu1", "recall@5"} <= set(results["records"][0])


def test_topic_lines_take_ids_when_given_and_infer_them_when_omitted() -> None:
    texts = {"D1:1": "Hi Bo! I started a new job at the city library.",
             "D1:2": "Congratulations! Is it the one near the river?",
             "D1:3": "Yes, I work at the children's desk now."}
    names = {"ann", "bo"}
    [one] = parse_topics("Ann says that she started a new job at the library.\n\nmore chat",
                         list(texts), texts, names)
    assert one.turn_ids == ["D1:1"] and one.turn_ids_inferred
    two = parse_topics("- Ann works at the children's desk [D1:3]\n"
                       "2. Ann likes rivers a lot (D9:9)\nok", list(texts), texts, names)
    assert [t.summary for t in two] == ["Ann works at the children's desk",
                                        "Ann likes rivers a lot"]
    assert two[0].turn_ids == ["D1:3"] and not two[0].turn_ids_inferred
    assert two[1].turn_ids == ["D1:2"] and two[1].dropped_turn_ids == ["D9:9"]
    assert two[1].turn_ids_inferred  # its only id was not in the session
    for no_trait in ("NO_TRAIT", "Ann says that NO TRAIT", "This session tells nothing "
                     "about Ann.", "It does not tell anything about Ann"):
        assert parse_topics(no_trait, list(texts), texts, names) == []
    # a sentence sharing no word with the session (the speaker's name does not count)
    with pytest.raises(MalformedReply, match="shares no word"):
        parse_topics("Ann says that penguins fly south", list(texts), texts, names)
    with pytest.raises(MalformedReply, match="no topic sentence"):
        parse_topics("Ann\n\n", list(texts), texts, names)
    # an ungrounded line beside a grounded one is left out and reported, not fatal
    skipped: list[str] = []
    [kept] = parse_topics("Ann works at the library\nAnn says penguins fly south", list(texts),
                          texts, names, skipped)
    assert kept.turn_ids == ["D1:1", "D1:3"] and skipped == ["Ann says penguins fly south"]


def test_one_line_merge_replies_name_the_memory_as_shown() -> None:
    d = parse_merge("Answer: 2", 2, first_number=1)
    assert (d.action, d.index, d.summary) == ("merge", 1, None)
    d = parse_merge("Answer: [1] Ann moved from Oslo to Bergen\nbla", 3, first_number=1)
    assert (d.action, d.index, d.summary) == ("merge", 0, "Ann moved from Oslo to Bergen")
    for add in ("Answer: No, the new memory is not the same thing.", "NEW", "new topic"):
        assert parse_merge(add, 2, first_number=1).action == "add"
    assert parse_merge("Answer: Yes.", 1, first_number=1).index == 0
    for bad, reason in [("Answer: 3", r"out of range \(1..2\)"),
                        ("Answer: 0", "out of range"),
                        ("Answer: yes", "yes without the number"),
                        ("Answer: The new memory is about the cat", "neither a memory number"),
                        ("Answer:", "empty reply")]:
        with pytest.raises(MalformedReply, match=reason):
            parse_merge(bad, 2, first_number=1)
    # JSON merges count from first_number as well
    assert parse_merge('{"action": "merge", "index": 2, "summary": "s"}', 2, 1).index == 1
    with pytest.raises(MalformedReply, match=r"out of range \(1..2\)"):
        parse_merge('{"action": "merge", "index": 0, "summary": "s"}', 2, 1)


class PrefillLLM(ScriptedLLM):
    """Sees the whole prompt (user message and the open reply prefix) and continues it."""

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[Generation]:
        texts = ["\n".join(m["content"] for m in p) for p in prompts]
        self.calls.append((texts, params))
        return [Generation(text=self.reply(t), prompt_tokens=1, completion_tokens=1)
                for t in texts]


def test_default_prompts_read_one_line_replies_after_their_prefixes() -> None:
    def reply(text: str) -> str:
        if text.endswith("Ann says that") and "[D2:1]" not in text:
            return " she lives in Oslo."
        if text.endswith("Ann says that"):
            return " she moved to Bergen.\n\nThis is all."
        if text.endswith("Bo says that") and "[D2:2]" not in text:
            return " NO_TRAIT"
        if text.endswith("Bo says that"):
            return " the weather is purple"  # shares no word with the session: malformed
        if text.endswith("Answer:"):
            return " 1"
        return "Bergen [0]"

    llm = PrefillLLM(reply)
    [res] = PipelineRuntime(validate_spec(rmm_spec(json_replies=False)), llm).run(
        [two_session_episode()])
    memory = res.memory
    assert isinstance(memory, TopicMemory)
    [topic] = memory.topics()
    assert topic.text == "Ann says that she lives in Oslo. Ann says that she moved to Bergen."
    assert topic.turn_ids == ["D1:1", "D2:1"]
    first, second = [s for s in res.ingest if s.component == "prospective_reflection"]
    assert first.extra["malformed"] == 0 and first.extra["no_trait"] == 1
    assert first.output["extractions"][0]["topics"][0]["turn_ids_inferred"] is True
    assert second.extra["ops"] == {"ADD": 0, "MERGE": 1}
    assert second.extra["malformed"] == 1 and second.extra["decisions"] == 3
    bad = next(e for e in second.output["extractions"] if not e["valid"])
    assert bad["raw"] == "Bo says that the weather is purple" and "no word" in bad["error"]
    [decision] = second.output["decisions"]
    assert decision["raw"] == "Answer: 1" and decision["summary_joined"] is True
    merge_prompt = next(t for t in llm.calls[-2][0] if t.endswith("Answer:"))
    assert "[1] Ann says that she lives in Oslo." in merge_prompt
    extract_prompt = llm.calls[0][0][0]
    assert "{" not in extract_prompt and "D1:3" not in extract_prompt  # no literal examples
