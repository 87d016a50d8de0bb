"""HotpotQA records (distractor setting) and a line-numbered JSON / JSONL record reader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.errors import DataError


class HotpotQARecord(BaseModel):
    """One HotpotQA question with its paragraphs (``[title, [sentences]]``) and gold facts."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str = Field(alias="_id")
    question: str
    answer: str
    type: str | None = None
    level: str | None = None
    context: list[tuple[str, list[str]]]
    supporting_facts: list[tuple[str, int]]

    @property
    def supporting_titles(self) -> list[str]:
        """Titles of the gold paragraphs, unique, in the order the facts name them."""
        return list(dict.fromkeys(title for title, _ in self.supporting_facts))

    def paragraphs(self) -> list[tuple[str, str]]:
        """The record's own paragraphs as ``(title, text)``; sentences joined as they are."""
        return [(title, "".join(sentences)) for title, sentences in self.context]


def _file_text_error(path: str, raw: bytes, exc: UnicodeDecodeError) -> DataError:
    line = raw.count(b"\n", 0, exc.start) + 1
    return DataError(path, f"not valid UTF-8 ({exc.reason} at byte {exc.start})", line=line)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(str(path), f"cannot read file: {exc.strerror or exc}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _file_text_error(str(path), raw, exc) from exc


def _check_object(path: str, obj: Any, line: int) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, got {_json_type(obj)}", line=line)
    return obj


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _iter_array(path: str, text: str, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSON array file with the line each one starts on."""
    decoder = json.JSONDecoder()
    ws = " \t\r\n"
    pos = start + 1  # after "["
    line = text.count("\n", 0, pos) + 1
    expect_value = True
    first = True
    while True:
        new = pos
        while new < len(text) and text[new] in ws:
            new += 1
        line += text.count("\n", pos, new)
        pos = new
        if pos >= len(text):
            raise DataError(path, "invalid JSON: the array is never closed with ']'", line=line)
        ch = text[pos]
        if ch == "]" and (first or not expect_value):
            break
        if not expect_value:
            if ch != ",":
                raise DataError(path, "invalid JSON: expected ',' or ']' between records",
                                line=line)
            pos += 1
            expect_value = True
            continue
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"invalid JSON: {exc.msg} (column {exc.colno})",
                            line=exc.lineno) from exc
        yield line, _check_object(path, obj, line)
        line += text.count("\n", pos, end)
        pos = end
        expect_value = False
        first = False
    rest = text[pos + 1 :]
    if rest.strip():
        extra_line = line + rest[: len(rest) - len(rest.lstrip())].count("\n")
        raise DataError(path, "invalid JSON: extra data after the closing ']'", line=extra_line)


def iter_json_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, object)`` from a JSONL file (blank lines skipped) or a JSON array file.

    ``line`` is the 1-based line a record starts on. Anything malformed raises a DataError
    naming the file and line. Reading is lazy for JSONL, so stopping early is cheap.
    """
    p = Path(path)
    name = str(path)
    if not p.is_file():
        raise DataError(name, "no such file" if not p.exists() else "not a file")
    with p.open("rb") as fh:
        head = fh.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    if head.startswith("["):
        text = _read_text(p)
        yield from _iter_array(name, text, text.index("["))
        return
    with p.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(name, f"not valid UTF-8 ({exc.reason} at column {exc.start + 1})",
                                line=lineno) from exc
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                hint = " (expected one JSON object per line, or a JSON array)" if (
                    lineno == 1 and line.lstrip().startswith("{")) else ""
                raise DataError(name, f"invalid JSON: {exc.msg} (column {exc.colno}){hint}",
                                line=lineno) from exc
            yield lineno, _check_object(name, obj, lineno)


def field_path(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a dotted path: ``('context', 3, 1)`` -> ``context.3.1``."""
    return ".".join(str(part) for part in loc)


def pydantic_error(path: str, exc: pydantic.ValidationError, line: int | None) -> DataError:
    """The first problem of a pydantic error as a DataError; the others are counted."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = field_path(first["loc"])
    if first["type"] == "missing":
        message = f"missing required field {where!r}"
    else:
        message = f"{first['msg']} (got {_json_type(first.get('input'))})"
    if len(errors) > 1:
        others = ", ".join(field_path(e["loc"]) or "record" for e in errors[1:4])
        more = "" if len(errors) <= 4 else ", ..."
        message += f"; {len(errors) - 1} more problem(s) at {others}{more}"
    return DataError(path, message, line=line, field=where or None)


def load_hotpotqa(path: str | Path, limit: int | None = None) -> list[HotpotQARecord]:
    """Read HotpotQA records from JSONL (one object a line) or a JSON array file.

    ``limit`` keeps the first ``limit`` records (and stops reading there). Every problem raises
    a DataError naming the file, the line and the field (``context.3.1`` style paths).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records: list[HotpotQARecord] = []
    if limit == 0:
        return records
    for line, obj in iter_json_records(path):
        try:
            records.append(HotpotQARecord.model_validate(obj))
        except pydantic.ValidationError as exc:
            raise pydantic_error(str(path), exc, line) from exc
        if limit is not None and len(records) >= limit:
            break
    return records
