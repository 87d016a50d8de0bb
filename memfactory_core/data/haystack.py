"""RULER-HotpotQA haystacks: a question's gold paragraphs hidden among seeded distractors.

Follows the eval files of MemAgent (RULER's ``qa`` task on HotpotQA): the pool is every unique
paragraph of the records, each haystack is the gold documents plus distractors sampled from the
pool, shuffled, and written as ``Document {i}:\\n{title}\\n{text}`` joined by blank lines.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from memfactory_core.data.episode import QA, Episode
from memfactory_core.data.hotpotqa import HotpotQARecord
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import TextTokenizer

Paragraph = tuple[str, str]
"""``(title, text)`` with the sentences joined as they are (they carry their own spaces)."""


def format_documents(docs: Sequence[Paragraph]) -> str:
    """``Document 1:\\n{title}\\n{text}`` blocks, numbered from 1, joined by blank lines."""
    return "\n\n".join(
        f"Document {i}:\n{title}\n{text}" for i, (title, text) in enumerate(docs, start=1)
    )


@dataclass
class ParagraphPool:
    """Every unique paragraph of a set of records, in a canonical (sorted) order.

    The order does not depend on the order of the records, so a haystack depends only on the
    records' paragraphs, the seed, the question id and the number of documents.
    """

    paragraphs: list[Paragraph]
    by_title: dict[str, list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_title = {}
        for i, (title, _) in enumerate(self.paragraphs):
            self.by_title.setdefault(title, []).append(i)

    @classmethod
    def from_records(cls, records: Sequence[HotpotQARecord]) -> ParagraphPool:
        unique = {p for r in records for p in r.paragraphs()}
        return cls(sorted(unique))

    def __len__(self) -> int:
        return len(self.paragraphs)


def _gold_documents(
    record: HotpotQARecord, pool: ParagraphPool
) -> tuple[list[str], list[Paragraph], list[str]]:
    """Gold titles, their documents (own context first, else the pool) and titles not found."""
    own: dict[str, str] = {}
    for title, text in record.paragraphs():
        own.setdefault(title, text)
    titles = record.supporting_titles
    docs: list[Paragraph] = []
    missing: list[str] = []
    for title in titles:
        if title in own:
            docs.append((title, own[title]))
        elif title in pool.by_title:
            docs.append(pool.paragraphs[pool.by_title[title][0]])
        else:
            missing.append(title)
    return titles, docs, missing


def _episode(
    record: HotpotQARecord,
    episode_id: str,
    docs: list[Paragraph],
    gold: set[Paragraph],
    gold_titles: list[str],
    missing: list[str],
    tokenizer: TextTokenizer | None,
    extra: dict[str, object],
) -> Episode:
    context = format_documents(docs)
    meta: dict[str, object] = {
        "source": "hotpotqa",
        "n_docs": len(docs),
        **extra,
        "gold_titles": gold_titles,
        "gold_positions": [i for i, d in enumerate(docs, start=1) if d in gold],
        "missing_gold_titles": missing,
        "chars": len(context),
        "tokens": len(tokenizer.encode(context)) if tokenizer is not None else None,
        "type": record.type,
        "level": record.level,
    }
    qa = QA(
        id=record.id,
        question=record.question,
        answers=[record.answer],
        meta={"type": record.type, "level": record.level},
    )
    return Episode(id=episode_id, context=context, questions=[qa], meta=meta)


def build_haystacks(
    records: Sequence[HotpotQARecord],
    n_docs: int,
    seed: int = 0,
    tokenizer: TextTokenizer | None = None,
    *,
    questions: Sequence[HotpotQARecord] | None = None,
    pool: ParagraphPool | None = None,
) -> list[Episode]:
    """One haystack episode of exactly ``n_docs`` documents per question.

    The pool is every unique paragraph of ``records``; haystacks are built for ``questions``
    (default: all records). Each holds the question's gold documents (supporting-fact titles,
    text from its own context, else from the pool) and distractors sampled from the pool minus
    its gold titles with ``random.Random(f"{seed}:{id}")``, then shuffled by the same generator:
    a question's haystack does not depend on which other questions are built. Gold titles found
    nowhere are listed in ``meta["missing_gold_titles"]``. ``meta`` also records ``n_docs``,
    ``gold_titles``, 1-based ``gold_positions``, ``chars`` and ``tokens`` (None without a
    tokenizer). Episode ids are ``{record id}@{n_docs}``.
    """
    if n_docs < 1:
        raise MemFactoryError(f"n_docs must be at least 1, got {n_docs}")
    pool = pool if pool is not None else ParagraphPool.from_records(records)
    targets = records if questions is None else questions
    episodes = []
    for record in targets:
        gold_titles, gold_docs, missing = _gold_documents(record, pool)
        if n_docs < len(gold_docs):
            raise MemFactoryError(
                f"question {record.id}: n_docs={n_docs} is smaller than its {len(gold_docs)} "
                "gold documents"
            )
        excluded = {i for t in gold_titles for i in pool.by_title.get(t, ())}
        n_distractors = n_docs - len(gold_docs)
        available = len(pool) - len(excluded)
        if n_distractors > available:
            raise MemFactoryError(
                f"question {record.id}: n_docs={n_docs} needs {n_distractors} distractors besides "
                f"its {len(gold_docs)} gold documents, but the pool has only {available} other "
                f"paragraphs ({len(pool)} unique paragraphs in all); use at most "
                f"{available + len(gold_docs)} documents or more records"
            )
        rng = random.Random(f"{seed}:{record.id}")
        # Sample enough indices that dropping the excluded ones still leaves n_distractors.
        drawn = rng.sample(range(len(pool)), n_distractors + len(excluded))
        chosen = [i for i in drawn if i not in excluded][:n_distractors]
        docs = gold_docs + [pool.paragraphs[i] for i in chosen]
        rng.shuffle(docs)
        episodes.append(
            _episode(record, f"{record.id}@{n_docs}", docs, set(gold_docs), gold_titles,
                     missing, tokenizer, {"seed": seed, "setting": "haystack"})
        )
    return episodes


def build_distractor_episodes(
    records: Sequence[HotpotQARecord], tokenizer: TextTokenizer | None = None
) -> list[Episode]:
    """HotpotQA's own distractor setting: each record's paragraphs, in file order, as one context.

    Same document format and ``meta`` as :func:`build_haystacks`; ids are
    ``{record id}@distractor``. Gold titles absent from the record's context are listed in
    ``meta["missing_gold_titles"]`` (the pool is not consulted here).
    """
    episodes = []
    for record in records:
        docs = record.paragraphs()
        own_titles = {t for t, _ in docs}
        gold_titles = record.supporting_titles
        gold = {d for d in docs if d[0] in gold_titles}
        missing = [t for t in gold_titles if t not in own_titles]
        episodes.append(
            _episode(record, f"{record.id}@distractor", docs, gold, gold_titles, missing,
                     tokenizer, {"setting": "distractor"})
        )
    return episodes
