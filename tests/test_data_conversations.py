"""Conversation loaders: LoCoMo (Memory-R1 split, sessions, categories), LongMemEval, the
bundled sample, and errors that name file, conversation and field."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from memfactory_core.data.conversations import (
    ABSTENTION_ANSWER,
    load_locomo,
    load_longmemeval,
    parse_evidence,
)
from memfactory_core.data.loaders import detect_format, load_episodes
from memfactory_core.errors import DataError, MemFactoryError
from memfactory_core.paths import SAMPLE_DATA_DIR

SHARED_LOCOMO = SAMPLE_DATA_DIR.parent.parent.parent / "shared" / "data" / "locomo10.json"
SAMPLE = SAMPLE_DATA_DIR / "conversations_sample.json"


def locomo_record(sid: str = "conv-x") -> dict:
    return {
        "sample_id": sid,
        "conversation": {
            "speaker_a": "Ann", "speaker_b": "Bo",
            "session_1_date_time": "1:00 pm on 1 May, 2023",
            "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "I live in Oslo."},
                {"speaker": "Bo", "dia_id": "D1:2", "text": "Look at my cat!",
                 "img_url": ["x"], "blip_caption": "a photo of a cat"},
            ],
            "session_2_date_time": "2:00 pm on 9 June, 2023",
            "session_2": [{"speaker": "Ann", "dia_id": "D2:1", "text": "I moved to Bergen."}],
        },
        "qa": [
            {"question": "Where does Ann live?", "answer": "Bergen", "evidence": ["D2:1"],
             "category": 4},
            {"question": "What pet does Bo have?", "answer": "a cat", "evidence": ["D1:2"],
             "category": 4},
            {"question": "When did Ann move?", "answer": 2023, "evidence": ["D2:1; D1:1"],
             "category": 2},
            {"question": "What is Bo's dog called?", "evidence": ["D1:2"], "category": 5,
             "adversarial_answer": "Rex"},
        ],
        "observation": {"session_1_observation": {"Ann": [["Ann lives in Oslo.", "D1:1"]],
                                                  "Bo": [["Bo has a cat.", ["D1:2"]]]}},
    }


def write(tmp_path: Path, records: list, name: str = "conv.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def test_locomo_format_fields_sessions_and_categories(tmp_path: Path) -> None:
    path = write(tmp_path, [locomo_record()])
    assert detect_format(path) == "locomo"
    [ep] = load_episodes(path)
    conv = ep.conversation
    assert conv is not None and conv.speakers == ["Ann", "Bo"]
    t = conv.sessions[0].turns[1]
    assert (t.id, t.speaker, t.session, t.time) == ("D1:2", "Bo", 1, "1:00 pm on 1 May, 2023")
    assert t.text == "Look at my cat! [shares a photo: a photo of a cat]"
    assert t.facts == ["Bo has a cat."]
    assert [q.id for q in ep.questions] == ["conv-x/q0", "conv-x/q1", "conv-x/q2"]
    assert ep.questions[2].answers == ["2023"] and ep.questions[2].evidence == ["D2:1", "D1:1"]
    [ep5] = load_episodes(path, categories=[5])
    assert ep5.questions[0].answers == [ABSTENTION_ANSWER]
    assert ep5.questions[0].meta["adversarial_answer"] == "Rex"
    # first session only: questions whose evidence lies in later sessions are dropped
    [ep1] = load_episodes(path, sessions=1)
    assert len(ep1.conversation.sessions) == 1  # type: ignore[union-attr]
    assert [q.id for q in ep1.questions] == ["conv-x/q1"]
    assert sum(len(e.questions) for e in load_episodes(path, limit=2)) == 2


def test_observation_absent_is_fine(tmp_path: Path) -> None:
    rec = locomo_record()
    del rec["observation"]
    [ep] = load_episodes(write(tmp_path, [rec]))
    assert ep.meta["given_facts"] == 0


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["qa"][1].pop("answer"), "qa[1].answer"),
    (lambda r: r["qa"][0].pop("evidence"), "qa[0].evidence"),
    (lambda r: r["conversation"]["session_1"][0].pop("dia_id"),
     "conversation.session_1[0].dia_id"),
    (lambda r: r["conversation"].pop("session_2_date_time"), "conversation.session_2_date_time"),
    (lambda r: r["conversation"].pop("speaker_b"), "conversation.speaker_b"),
    (lambda r: r["qa"][0].update(category="4"), "qa[0].category"),
])
def test_missing_or_wrong_fields_name_file_conversation_and_field(tmp_path: Path, edit,
                                                                  field: str) -> None:
    good = locomo_record("conv-a")
    bad = copy.deepcopy(locomo_record("conv-b"))
    edit(bad)
    path = write(tmp_path, [good, bad])
    with pytest.raises(DataError) as info:
        load_locomo(path)
    msg = str(info.value)
    assert str(path) in msg and "conversation 'conv-b'" in msg and field in msg
    assert info.value.field == field and info.value.line is not None and info.value.line > 1


def test_unknown_conversation_or_split_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, [locomo_record()])
    with pytest.raises(MemFactoryError, match=r"no conversation.*conv-9.*has: conv-x"):
        load_locomo(path, conversations=["conv-9"])
    with pytest.raises(MemFactoryError, match="unknown LoCoMo split"):
        load_locomo(path, split="dev")
    with pytest.raises(MemFactoryError, match="apply to conversation data"):
        load_episodes(SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl", sessions=2)


def test_evidence_parsing_tolerates_loose_ids() -> None:
    assert parse_evidence(["D8:6; D9:17", "D", "D:11:26", "D01:2"]) == ["D8:6", "D9:17", "D1:2"]


def test_longmemeval_documented_format(tmp_path: Path) -> None:
    records = [{
        "question_id": "q1_abs", "question_type": "knowledge-update",
        "question": "Where do I work now?", "answer": "at the museum",
        "question_date": "2023/05/30 (Tue) 10:00",
        "haystack_session_ids": ["s1", "s2"],
        "haystack_dates": ["2023/05/01 (Mon) 09:00", "2023/05/20 (Sat) 11:00"],
        "haystack_sessions": [
            [{"role": "user", "content": "I work at the zoo."},
             {"role": "assistant", "content": "Nice!"}],
            [{"role": "user", "content": "I switched to the museum.", "has_answer": True},
             {"role": "assistant", "content": "Congrats."}],
        ],
        "answer_session_ids": ["s2"],
    }]
    path = write(tmp_path, records, "lme.json")
    assert detect_format(path) == "longmemeval"
    [ep] = load_episodes(path)
    q = ep.questions[0]
    assert q.evidence == ["s2:1"] and q.category == "knowledge-update"
    assert q.meta["abstention"] is True
    assert [t.id for t in ep.conversation.turns()] == ["s1:1", "s1:2", "s2:1", "s2:2"]  # type: ignore[union-attr]
    del records[0]["haystack_dates"]
    with pytest.raises(DataError, match=r"q1_abs.*haystack_dates"):
        load_longmemeval(write(tmp_path, records, "bad.json"))


def test_bundled_sample_is_locomo_format_with_changing_facts() -> None:
    episodes = load_episodes(SAMPLE)
    assert len(episodes) == 3
    assert all(len(e.conversation.sessions) == 3 for e in episodes)  # type: ignore[union-attr]
    assert sum(len(e.questions) for e in episodes) == 23
    assert {q.category for e in episodes for q in e.questions} == {1, 2, 3, 4}
    ids = {t.id for e in episodes for t in e.conversation.turns()}  # type: ignore[union-attr]
    assert all(ev in ids for e in episodes for q in e.questions for ev in q.evidence)


@pytest.mark.data
def test_locomo_memory_r1_split_sizes() -> None:
    if not SHARED_LOCOMO.is_file():
        pytest.skip(f"LoCoMo not found at {SHARED_LOCOMO} (../shared/data is absent)")
    sizes = {split: sum(len(e.questions) for e in load_locomo(SHARED_LOCOMO, split=split))
             for split in ("train", "validation", "test")}
    assert sizes == {"train": 152, "validation": 81, "test": 1307}
    [conv30] = load_locomo(SHARED_LOCOMO, conversations=["conv-30"], sessions=3)
    assert len(conv30.conversation.sessions) == 3  # type: ignore[union-attr]
    assert all(int(e[1:].split(":")[0]) <= 3 for q in conv30.questions for e in q.evidence)
    assert conv30.meta["given_facts"] > 0


def test_run_episode_reads_text_or_a_conversation_file(tmp_path: Path) -> None:
    from memfactory_core.data.loaders import run_episode

    ep = run_episode(SAMPLE, "Where does Nora live?")
    assert ep.id == "sample-1" and ep.conversation is not None
    assert [q.question for q in ep.questions] == ["Where does Nora live?"]
    assert run_episode(SAMPLE, "?", conversation="sample-3").id == "sample-3"
    doc = tmp_path / "doc.txt"
    doc.write_text("plain text", encoding="utf-8")
    assert run_episode(doc, "?").context == "plain text"
    binary = tmp_path / "x.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MemFactoryError, match="not a UTF-8 text file"):
        run_episode(binary, "?")
    with pytest.raises(MemFactoryError, match="context file not found"):
        run_episode(tmp_path / "missing.txt", "?")
