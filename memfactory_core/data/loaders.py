"""One entry point for question-answering data: any supported file -> Episodes."""

from __future__ import annotations

from pathlib import Path

from memfactory_core.data.episode import Episode
from memfactory_core.data.haystack import (
    ParagraphPool,
    build_distractor_episodes,
    build_haystacks,
)
from memfactory_core.data.hotpotqa import iter_json_records, load_hotpotqa
from memfactory_core.data.memagent_files import load_memagent_json, load_memagent_parquet
from memfactory_core.errors import DataError, MemFactoryError
from memfactory_core.llm.base import TextTokenizer

FORMATS: tuple[str, ...] = ("hotpotqa", "memagent_json", "memagent_parquet")
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
        keys = ", ".join(sorted(record)) or "none"
        raise DataError(
            str(path),
            f"cannot tell the data format from the first record (keys: {keys}); expected "
            "HotpotQA (_id, question, answer, context, supporting_facts) or a MemAgent eval "
            "file (context, input, answers). Pass format= one of: " + ", ".join(FORMATS),
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
) -> list[Episode]:
    """Load a QA data file as Episodes.

    ``format``: ``auto`` (from the extension and the first record's keys), ``hotpotqa``,
    ``memagent_json`` or ``memagent_parquet``. HotpotQA with ``n_docs`` gives RULER-HotpotQA
    haystacks of that many documents (the distractor pool is every record of the file); without
    it, each record's own paragraphs (the distractor setting). ``limit`` keeps the first
    ``limit`` questions and builds only those. ``tokenizer`` fills ``meta["tokens"]``.
    ``exclude_ids`` leaves out the questions with those ids (before ``limit``), e.g. the
    questions a policy was trained on.
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
