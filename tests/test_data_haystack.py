"""RULER-HotpotQA haystacks: gold documents, exact size, determinism, batch independence."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest

from memfactory_core.data import (
    HotpotQARecord,
    ParagraphPool,
    build_distractor_episodes,
    build_haystacks,
    format_documents,
    load_episodes,
    load_hotpotqa,
)
from memfactory_core.data.episode import Episode
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import SAMPLE_DATA_DIR
from tests.fakes import CharTokenizer

SAMPLE = SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl"
SHARED_HOTPOTQA = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    / "hotpotqa_distractor_500.jsonl"
)
DOC_HEADER = re.compile(r"(?:^|\n\n)Document (\d+):\n([^\n]*)\n")


@pytest.fixture(scope="module")
def records() -> list[HotpotQARecord]:
    return load_hotpotqa(SAMPLE)


def documents(episode: Episode) -> list[tuple[int, str]]:
    """(number, title) of every document in a haystack."""
    return [(int(n), title) for n, title in DOC_HEADER.findall(episode.context)]


def test_format_documents() -> None:
    text = format_documents([("A", "a text."), ("B", "b text.")])
    assert text == "Document 1:\nA\na text.\n\nDocument 2:\nB\nb text."


def test_exact_size_and_gold_present(records: list[HotpotQARecord]) -> None:
    episodes = build_haystacks(records, 40, seed=0)
    assert len(episodes) == len(records)
    for record, episode in zip(records, episodes, strict=True):
        docs = documents(episode)
        assert [n for n, _ in docs] == list(range(1, 41))
        titles = [t for _, t in docs]
        assert len(set(titles)) == 40
        own = dict(record.paragraphs())
        for title in record.supporting_titles:
            assert f"\n{title}\n{own[title]}" in episode.context
            assert titles.count(title) == 1
        positions = [n for n, t in docs if t in record.supporting_titles]
        assert episode.meta["gold_positions"] == positions
        assert episode.meta["gold_titles"] == record.supporting_titles
        assert episode.meta["missing_gold_titles"] == []
        assert episode.meta["n_docs"] == 40
        assert episode.meta["chars"] == len(episode.context)
        assert episode.meta["tokens"] is None
        assert episode.id == f"{record.id}@40"
        (qa,) = episode.questions
        assert (qa.id, qa.question, qa.answers) == (record.id, record.question, [record.answer])


def test_distractors_come_from_the_pool(records: list[HotpotQARecord]) -> None:
    pool = set(ParagraphPool.from_records(records).paragraphs)
    (episode,) = build_haystacks(records, 60, seed=3, questions=records[:1])
    blocks = episode.context.split("\n\n")
    for block in blocks:
        _, title, text = block.split("\n", 2)
        assert (title, text) in pool


def test_deterministic_per_seed(records: list[HotpotQARecord]) -> None:
    a = build_haystacks(records, 30, seed=7)
    b = build_haystacks(records, 30, seed=7)
    c = build_haystacks(records, 30, seed=8)
    assert [e.context for e in a] == [e.context for e in b]
    assert [e.context for e in a] != [e.context for e in c]


def test_same_question_same_haystack_regardless_of_batch(
    records: list[HotpotQARecord],
) -> None:
    target = records[5]
    alone = build_haystacks(records, 50, seed=1, questions=[target])[0]
    batch = build_haystacks(records, 50, seed=1, questions=records[3:9])[2]
    everything = build_haystacks(list(reversed(records)), 50, seed=1)
    in_reversed = next(e for e in everything if e.id == alone.id)
    assert alone.context == batch.context == in_reversed.context
    assert alone.meta == batch.meta == in_reversed.meta


def test_tokenizer_counts_tokens(records: list[HotpotQARecord]) -> None:
    (episode,) = build_haystacks(records, 20, tokenizer=CharTokenizer(), questions=records[:1])
    assert episode.meta["tokens"] == len(episode.context)


def test_too_few_documents_is_a_clear_error(records: list[HotpotQARecord]) -> None:
    with pytest.raises(MemFactoryError, match=r"n_docs=1 is smaller than its 2 gold documents"):
        build_haystacks(records, 1, questions=records[:1])
    with pytest.raises(MemFactoryError, match="at least 1"):
        build_haystacks(records, 0)


def test_too_many_documents_is_a_clear_error(records: list[HotpotQARecord]) -> None:
    with pytest.raises(MemFactoryError) as info:
        build_haystacks(records, 301, questions=records[:1])
    message = str(info.value)
    assert "n_docs=301" in message and "300 unique paragraphs" in message
    assert "at most 300" in message
    (episode,) = build_haystacks(records, 300, questions=records[:1])
    assert len(documents(episode)) == 300


def test_missing_gold_paragraph_is_recorded() -> None:
    record = HotpotQARecord(
        _id="x", question="q?", answer="a", type="bridge", level="hard",
        context=[("Here", ["Present."]), ("Other", ["Distractor."])],
        supporting_facts=[("Here", 0), ("Elsewhere", 0)],
    )
    other = HotpotQARecord(
        _id="y", question="q2?", answer="b",
        context=[("P", ["p."]), ("Q", ["q."])], supporting_facts=[("P", 0)],
    )
    (episode,) = build_haystacks([record, other], 3, questions=[record])
    assert episode.meta["missing_gold_titles"] == ["Elsewhere"]
    assert episode.meta["gold_titles"] == ["Here", "Elsewhere"]
    assert len(episode.meta["gold_positions"]) == 1
    assert "\nHere\nPresent." in episode.context


def test_gold_text_falls_back_to_the_pool() -> None:
    record = HotpotQARecord(_id="x", question="q?", answer="a", context=[("A", ["a."])],
                            supporting_facts=[("A", 0), ("B", 0)])
    other = HotpotQARecord(_id="y", question="q?", answer="b",
                           context=[("B", ["b."]), ("C", ["c."])], supporting_facts=[])
    (episode,) = build_haystacks([record, other], 3, questions=[record])
    assert episode.meta["missing_gold_titles"] == []
    assert len(episode.meta["gold_positions"]) == 2


def test_distractor_setting(records: list[HotpotQARecord]) -> None:
    episodes = build_distractor_episodes(records[:3])
    for record, episode in zip(records[:3], episodes, strict=True):
        assert [t for _, t in documents(episode)] == [t for t, _ in record.context]
        assert episode.id == f"{record.id}@distractor"
        assert episode.meta["n_docs"] == 10
        assert len(episode.meta["gold_positions"]) == len(record.supporting_titles)


def test_load_episodes_builds_only_the_limit(records: list[HotpotQARecord]) -> None:
    # The pool comes from all 30 records even though only 2 questions are built.
    episodes = load_episodes(SAMPLE, n_docs=250, limit=2, seed=4)
    assert [e.id for e in episodes] == [f"{r.id}@250" for r in records[:2]]
    direct = build_haystacks(records, 250, seed=4, questions=records[:2])
    assert [e.context for e in episodes] == [e.context for e in direct]
    distractor = load_episodes(SAMPLE, limit=4)
    assert [e.meta["setting"] for e in distractor] == ["distractor"] * 4


@pytest.mark.data
def test_full_file_at_800_documents() -> None:
    if not SHARED_HOTPOTQA.is_file():
        pytest.skip(f"shared HotpotQA data not found at {SHARED_HOTPOTQA}")
    records = load_hotpotqa(SHARED_HOTPOTQA)
    pool = ParagraphPool.from_records(records)
    # its speed is measured by bench/haystack_build.py
    episodes = build_haystacks(records, 800, questions=records[:50], pool=pool)
    assert all(len(documents(e)) == 800 for e in episodes)
    assert 300_000 < statistics.mean(e.meta["chars"] for e in episodes) < 700_000
    # A record whose gold paragraph is absent from the file is still built, and says so.
    assert any(e.meta["missing_gold_titles"] for e in episodes)


def test_exclude_leaves_out_questions_before_limit(tmp_path: Path) -> None:
    from memfactory_core.data.loaders import load_episodes, question_ids

    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    excluded = question_ids(train)
    assert len(excluded) == 5
    for n_docs in (None, 3):
        kept = load_episodes(SAMPLE, n_docs=n_docs, limit=4, exclude_ids=excluded)
        ids = [q.id for e in kept for q in e.questions]
        assert len(ids) == 4 and not set(ids) & excluded
        assert ids == [q.id for e in load_episodes(SAMPLE, limit=9) for q in e.questions][5:]
