"""MemAgent's data files: eval JSON/JSONL and (verl-style or flat) training parquet -> Episodes.

Eval files (``eval_{N}.json``) are a JSON list (or JSONL) of objects with ``context``, ``input``
(the question), ``answers`` (a list or one string) and optionally ``_id``/``id``/``index`` and
``num_docs``. Training parquet rows are either flat (``context``, ``input`` or ``question``,
``answers``) or verl-style (``context``, ``prompt`` = chat messages or ``extra_info.question``,
``reward_model.ground_truth``, ``extra_info.index``/``num_docs``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from memfactory_core.data.episode import QA, Episode
from memfactory_core.data.hotpotqa import iter_json_records
from memfactory_core.errors import DataError
from memfactory_core.llm.base import TextTokenizer

_ID_KEYS = ("_id", "id", "index")
_QUESTION_KEYS = ("input", "question")
_ANSWER_KEYS = ("answers", "outputs", "answer")
# Keys copied into Episode.meta when they hold a scalar.
_META_KEYS = ("num_docs", "length", "data_source", "index")
_PARQUET_BATCH_ROWS = 64


class _RecordReader:
    """Reads typed fields from one record; every problem names the file, line and field."""

    def __init__(self, path: str, line: int, record: Mapping[str, Any]) -> None:
        self.path = path
        self.line = line
        self.record = record

    def error(self, field: str | None, message: str) -> DataError:
        return DataError(self.path, message, line=self.line, field=field)

    def lookup(self, dotted: str) -> Any:
        """The value at ``a.b`` (nested mappings), or None when any part is absent."""
        value: Any = self.record
        for part in dotted.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value

    def first(self, keys: tuple[str, ...]) -> tuple[str, Any] | None:
        for key in keys:
            value = self.lookup(key)
            if value is not None:
                return key, value
        return None

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type(value).__name__}")
        return value

    def answers(self, key: str, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if hasattr(value, "tolist"):  # numpy arrays from pandas
            value = value.tolist()
        if not isinstance(value, list | tuple):
            raise self.error(
                key, f"expected a list of strings or a string, got {type(value).__name__}"
            )
        if not value:
            raise self.error(key, "the answer list is empty")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}.{i}", f"expected a string, got {type(item).__name__}")
        return list(value)

    def missing(self, keys: tuple[str, ...], what: str) -> DataError:
        names = " or ".join(repr(k) for k in keys)
        present = ", ".join(map(str, sorted(self.record))) or "nothing"
        return self.error(keys[0], f"missing {what}: expected field {names} "
                                   f"(record has: {present})")

    def require(self, keys: tuple[str, ...], what: str) -> tuple[str, Any]:
        found = self.first(keys)
        if found is None:
            raise self.missing(keys, what)
        return found

    def record_id(self, keys: tuple[str, ...], default: str) -> str:
        found = self.first(keys)
        if found is None:
            return default
        key, value = found
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(key, f"expected a string or integer id, got {type(value).__name__}")
        return str(value)


def _episode(
    reader: _RecordReader,
    episode_id: str,
    context: str,
    question: str,
    answers: list[str],
    meta: dict[str, Any],
    tokenizer: TextTokenizer | None,
) -> Episode:
    meta["chars"] = len(context)
    meta["tokens"] = len(tokenizer.encode(context)) if tokenizer is not None else None
    meta["line"] = reader.line
    qa = QA(id=episode_id, question=question, answers=answers)
    return Episode(id=episode_id, context=context, questions=[qa], meta=meta)


def _scalar_meta(reader: _RecordReader, keys: tuple[str, ...]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key in keys:
        value = reader.lookup(key)
        if hasattr(value, "item"):  # numpy scalars from parquet
            value = value.item()
        if isinstance(value, str | int | float | bool):
            meta[key.rsplit(".", 1)[-1]] = value
    return meta


def _check_unique(seen: dict[str, int], episode: Episode, reader: _RecordReader) -> None:
    first = seen.setdefault(episode.id, reader.line)
    if first != reader.line:
        raise reader.error(None, f"duplicate id {episode.id!r} (first used on line/row {first})")


def load_memagent_json(
    path: str | Path, limit: int | None = None, tokenizer: TextTokenizer | None = None
) -> list[Episode]:
    """Episodes from a MemAgent eval file (JSON list or JSONL), one question each.

    Ids come from ``_id``, ``id`` or ``index``, else ``{file stem}-{n}`` (0-based record
    number); duplicates are an error. ``meta`` keeps ``num_docs``/``length`` when present, plus
    ``chars``, ``tokens`` (None without a tokenizer) and ``line``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    name = str(path)
    stem = Path(path).stem
    episodes: list[Episode] = []
    seen: dict[str, int] = {}
    if limit == 0:
        return episodes
    for n, (line, record) in enumerate(iter_json_records(path)):
        reader = _RecordReader(name, line, record)
        context = reader.string("context", reader.require(("context",), "the context")[1])
        q_key, q_value = reader.require(_QUESTION_KEYS, "the question")
        question = reader.string(q_key, q_value)
        a_key, a_value = reader.require(_ANSWER_KEYS, "the answers")
        answers = reader.answers(a_key, a_value)
        episode_id = reader.record_id(_ID_KEYS, f"{stem}-{n}")
        meta = {"source": "memagent_json", **_scalar_meta(reader, _META_KEYS)}
        episode = _episode(reader, episode_id, context, question, answers, meta, tokenizer)
        _check_unique(seen, episode, reader)
        episodes.append(episode)
        if limit is not None and len(episodes) >= limit:
            break
    return episodes


def _iter_parquet_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(1-based row number, row as a dict)``, read in small batches (stopping early is cheap)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise DataError(str(path), "no such file" if not p.exists() else "not a file")
    try:
        parquet = pq.ParquetFile(p)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(str(path), f"not a readable parquet file: {exc}") from exc
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _parquet_question(reader: _RecordReader) -> str:
    found = reader.first((*_QUESTION_KEYS, "extra_info.question"))
    if found is not None:
        return reader.string(*found)
    prompt = reader.lookup("prompt")
    if prompt is None:
        raise reader.missing((*_QUESTION_KEYS, "extra_info.question", "prompt"), "the question")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        users = [m for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        message = users[-1] if users else prompt[-1]
        if isinstance(message, Mapping) and isinstance(message.get("content"), str):
            return message["content"]
    raise reader.error(
        "prompt", "expected a string or a list of chat messages with a user 'content'"
    )


def load_memagent_parquet(
    path: str | Path, limit: int | None = None, tokenizer: TextTokenizer | None = None
) -> list[Episode]:
    """Episodes from a MemAgent training/eval parquet file, one question per row.

    Flat rows (``context``, ``input``/``question``, ``answers``) and verl-style rows
    (``context``, ``extra_info.question`` or ``prompt``, ``reward_model.ground_truth``) are both
    accepted. Errors give the 1-based row number in the ``line`` slot. Ids come from
    ``_id``/``id``/``index``/``extra_info.index``, else ``{file stem}-{n}``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    name = str(path)
    stem = Path(path).stem
    episodes: list[Episode] = []
    seen: dict[str, int] = {}
    if limit == 0:
        return episodes
    for row, record in _iter_parquet_rows(path):
        reader = _RecordReader(name, row, record)
        context = reader.string("context", reader.require(("context",), "the context")[1])
        question = _parquet_question(reader)
        a_key, a_value = reader.require((*_ANSWER_KEYS, "reward_model.ground_truth"),
                                        "the answers")
        answers = reader.answers(a_key, a_value)
        episode_id = reader.record_id((*_ID_KEYS, "extra_info.index"), f"{stem}-{row - 1}")
        meta = {"source": "memagent_parquet",
                **_scalar_meta(reader, (*_META_KEYS, "extra_info.num_docs"))}
        episode = _episode(reader, episode_id, context, question, answers, meta, tokenizer)
        _check_unique(seen, episode, reader)
        episodes.append(episode)
        if limit is not None and len(episodes) >= limit:
            break
    return episodes
