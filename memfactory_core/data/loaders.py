"""One entry point for question-answering data: any supported file -> Episodes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from memfactory_core.data.conversations import load_locomo, load_longmemeval
from memfactory_core.data.episode import QA, Episode
from memfactory_core.data.haystack import (
    ParagraphPool,
    build_distractor_episodes,
    build_haystacks,
)
from memfactory_core.data.hotpotqa import iter_json_records, load_hotpotqa
from memfactory_core.data.memagent_files import load_memagent_json, load_memagent_parquet
from memfactory_core.errors import DataError, MemFactoryError
from memfactory_core.llm.base import TextTokenizer

FORMATS: tuple[str, ...] = (
    "hotpotqa", "memagent_json", "memagent_parquet", "locomo", "longmemeval",
)
CONVERSATION_FORMATS = ("locomo", "longmemeval")
"""Known data formats (``auto`` detects one of them)."""

_PARQUET_SUFFIXES = {".parquet", ".pq"}


def detect_format(path: str | Path) -> str:
    """The format of a data file, from its extension and the keys of its first record."""
    p = Path(path)
    if p.suffix.lower() in _PARQUET_SUFFIXES:
        return "memagent_parquet"
    for line, record in iter_json_records(p):
        if "supporting_facts" in record and isinstance(record.get("context"), list):
            return "hotpotqa"
        if isinstance(record.get("context"), str) and (
            "input" in record or "answers" in record
        ):
            return "memagent_json"
        if "conversation" in record and "qa" in record:
            return "locomo"
        if "haystack_sessions" in record:
            return "longmemeval"
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(
            str(path),
            f"cannot tell the data format from the first record (keys: {keys}); expected "
            "HotpotQA (_id, question, answer, context, supporting_facts) or a MemAgent eval "
            "file (context, input, answers), LoCoMo (sample_id, conversation, qa) or "
            "LongMemEval (question_id, haystack_sessions, ...). Pass format= one of: "
            + ", ".join(FORMATS),
            line=line,
        )
    raise DataError(str(path), "the file holds no records")


def _check_n_docs(episodes: list[Episode], n_docs: int | None, fmt: str, path: str) -> None:
    """MemAgent files have fixed contexts: n_docs may only confirm their ``num_docs``."""
    if n_docs is None:
        return
    found = sorted({e.meta.get("num_docs") for e in episodes}, key=str)
    if found != [n_docs]:
        raise MemFactoryError(
            f"{path}: n_docs={n_docs} applies to HotpotQA files only; {fmt} files have fixed "
            f"contexts (this file's num_docs: {', '.join(map(str, found)) or 'none'})"
        )


def question_ids(path: str | Path, format: str = "auto") -> set[str]:
    """The question ids of a data file (cheap: no haystacks are built)."""
    return {q.id for e in load_episodes(path, format=format) for q in e.questions}


def load_episodes(
    path: str | Path,
    format: str = "auto",
    n_docs: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    tokenizer: TextTokenizer | None = None,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
    conversations: Sequence[str] | None = None,
    split: str | None = None,
    sessions: int | None = None,
    categories: Iterable[int] | None = None,
) -> list[Episode]:
    """Load a QA data file as Episodes.

    ``format``: ``auto`` (from the extension and the first record's keys), ``hotpotqa``,
    ``memagent_json`` or ``memagent_parquet``. HotpotQA with ``n_docs`` gives RULER-HotpotQA
    haystacks of that many documents (the distractor pool is every record of the file); without
    it, each record's own paragraphs (the distractor setting). ``limit`` keeps the first
    ``limit`` questions and builds only those. ``tokenizer`` fills ``meta["tokens"]``.
    ``exclude_ids`` leaves out the questions with those ids (before ``limit``), e.g. the
    questions a policy was trained on.

    Conversation formats (``locomo``, ``longmemeval``) take ``conversations`` (LoCoMo sample
    ids), ``split`` (Memory-R1's LoCoMo split), ``sessions`` (read the first N sessions) and
    ``categories`` (LoCoMo categories, default 1-4); ``limit`` counts questions.
    """
    if format not in ("auto", *FORMATS):
        raise MemFactoryError(
            f"unknown data format {format!r}; known formats: auto, {', '.join(FORMATS)}"
        )
    if limit is not None and limit < 0:
        raise MemFactoryError(f"limit must be >= 0, got {limit}")
    if n_docs is not None and n_docs < 1:
        raise MemFactoryError(f"n_docs must be at least 1, got {n_docs}")
    fmt = detect_format(path) if format == "auto" else format
    conversation_options = {"conversations": conversations, "split": split,
                            "sessions": sessions, "categories": categories}
    if fmt not in CONVERSATION_FORMATS:
        given = sorted(k for k, v in conversation_options.items() if v is not None)
        if given:
            raise MemFactoryError(f"{path}: {', '.join(given)} apply to conversation data "
                                  f"(locomo, longmemeval), not to {fmt} files")
    else:
        if n_docs is not None:
            raise MemFactoryError(f"{path}: n_docs applies to HotpotQA files, not to {fmt}")
        if fmt == "locomo":
            episodes = load_locomo(path, conversations=conversations, split=split,
                                   sessions=sessions,
                                   categories=(1, 2, 3, 4) if categories is None else categories)
        else:
            if conversations is not None or split is not None or categories is not None:
                raise MemFactoryError(f"{path}: conversations, split and categories apply to "
                                      "LoCoMo files only")
            episodes = load_longmemeval(path, sessions=sessions)
        return _limit_questions(episodes, limit, exclude_ids)
    if fmt == "hotpotqa":
        if n_docs is None and not exclude_ids:
            return build_distractor_episodes(load_hotpotqa(path, limit=limit), tokenizer)
        records = load_hotpotqa(path)
        questions = [r for r in records if r.id not in exclude_ids]
        questions = questions if limit is None else questions[:limit]
        if n_docs is None:
            return build_distractor_episodes(questions, tokenizer)
        return build_haystacks(
            records, n_docs, seed=seed, tokenizer=tokenizer, questions=questions,
            pool=ParagraphPool.from_records(records),
        )
    loader = load_memagent_json if fmt == "memagent_json" else load_memagent_parquet
    if exclude_ids:
        episodes = [e for e in loader(path, tokenizer=tokenizer)
                    if not any(q.id in exclude_ids for q in e.questions)]
        episodes = episodes if limit is None else episodes[:limit]
    else:
        episodes = loader(path, limit=limit, tokenizer=tokenizer)
    _check_n_docs(episodes, n_docs, fmt, str(path))
    return episodes


def _limit_questions(episodes: list[Episode], limit: int | None,
                     exclude_ids: set[str] | frozenset[str]) -> list[Episode]:
    """Drop excluded questions, keep the first ``limit`` in all, drop episodes left empty."""
    out = []
    left = limit
    for ep in episodes:
        qas = [q for q in ep.questions if q.id not in exclude_ids]
        if left is not None:
            qas = qas[:left]
            left -= len(qas)
        if qas:
            out.append(ep.model_copy(update={"questions": qas}))
        if left == 0:
            break
    return out


def run_episode(path: str | Path, question: str, conversation: str | None = None) -> Episode:
    """The episode ``memfactory run`` reads: a conversation data file's first (or named)
    conversation, or any other file's text as a document, with ``question`` asked about it."""
    p = Path(path)
    if not p.is_file():
        raise MemFactoryError(f"context file not found: {p}")
    qa = QA(id="q", question=question, answers=[])
    if p.suffix.lower() in (".json", ".jsonl"):
        try:
            fmt = detect_format(p)
        except MemFactoryError:
            fmt = None
        if fmt in CONVERSATION_FORMATS:
            episodes = (load_locomo(p, conversations=[conversation] if conversation else None,
                                    categories=range(1, 6))
                        if fmt == "locomo" else load_longmemeval(p))
            if conversation and fmt != "locomo":
                episodes = [e for e in episodes if e.id == conversation]
            if not episodes:
                raise MemFactoryError(f"{p}: no conversation {conversation!r}")
            return episodes[0].model_copy(update={"questions": [qa]})
    if conversation:
        raise MemFactoryError(f"{p}: not a conversation data file (LoCoMo or LongMemEval)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise MemFactoryError(f"{p}: not a UTF-8 text file ({err.reason} at byte "
                              f"{err.start})") from None
    return Episode(id=p.stem, context=text, questions=[qa])
