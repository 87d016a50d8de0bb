"""HotpotQA loading: the shipped sample, JSON array files, and line-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfactory_core.data import HotpotQARecord, iter_json_records, load_hotpotqa
from memfactory_core.errors import DataError
from memfactory_core.paths import SAMPLE_DATA_DIR

SAMPLE = SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _record(i: int = 0, **changes: object) -> dict:
    record = {
        "_id": f"q{i}",
        "question": f"Question {i}?",
        "answer": f"answer {i}",
        "type": "bridge",
        "level": "hard",
        "context": [[f"Title {i}-{j}", [f"Sentence {j}.", " More."]] for j in range(4)],
        "supporting_facts": [[f"Title {i}-0", 0], [f"Title {i}-1", 1]],
    }
    record.update(changes)
    return record


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_sample_loads() -> None:
    records = load_hotpotqa(SAMPLE)
    assert len(records) == 30
    assert len({r.id for r in records}) == 30
    assert {r.type for r in records} == {"bridge", "comparison"}
    for r in records:
        assert len(r.context) == 10
        titles = {t for t, _ in r.context}
        assert set(r.supporting_titles) <= titles


def test_record_fields(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "a.jsonl", [_record(3)])
    (record,) = load_hotpotqa(path)
    assert isinstance(record, HotpotQARecord)
    assert record.id == "q3"
    assert record.context[0] == ("Title 3-0", ["Sentence 0.", " More."])
    assert record.supporting_facts == [("Title 3-0", 0), ("Title 3-1", 1)]
    assert record.supporting_titles == ["Title 3-0", "Title 3-1"]
    assert record.paragraphs()[1] == ("Title 3-1", "Sentence 1. More.")


def test_blank_lines_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("\n" + json.dumps(_record(0)) + "\n\n  \n" + json.dumps(_record(1)) + "\n"
                    + json.dumps(_record(2)) + "\n")
    assert [r.id for r in load_hotpotqa(path)] == ["q0", "q1", "q2"]
    assert [r.id for r in load_hotpotqa(path, limit=2)] == ["q0", "q1"]
    assert load_hotpotqa(path, limit=0) == []


def test_limit_stops_before_a_later_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(_record(0)) + "\n{broken\n")
    assert len(load_hotpotqa(path, limit=1)) == 1
    with pytest.raises(DataError):
        load_hotpotqa(path)


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    text = json.dumps([_record(0), _record(1)], indent=2)
    path.write_text(text)
    assert [r.id for r in load_hotpotqa(path)] == ["q0", "q1"]
    starts = [i for i, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    assert [line for line, _ in iter_json_records(path)] == starts


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    lines = [json.dumps(_record(i)) for i in range(6)] + ['{"_id": "x", "question": ']
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_hotpotqa(path)
    assert info.value.line == 7
    assert str(info.value).startswith(f"{path}:7: invalid JSON: ")


def test_invalid_json_in_array_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"_id": "a"},\n  {"_id": }\n]\n')
    with pytest.raises(DataError, match=r":3: invalid JSON") as info:
        list(iter_json_records(path))
    assert info.value.line == 3


def test_unclosed_array(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"_id": "a"}\n')
    with pytest.raises(DataError, match="never closed"):
        list(iter_json_records(path))


def test_missing_field_is_named(tmp_path: Path) -> None:
    bad = _record(1)
    del bad["question"]
    path = _write_jsonl(tmp_path / "a.jsonl", [_record(0), bad])
    with pytest.raises(DataError) as info:
        load_hotpotqa(path)
    err = info.value
    assert (err.line, err.field) == (2, "question")
    assert "missing required field 'question'" in str(err)
    assert str(err).startswith(f"{path}:2 (field 'question')")


def test_missing_id_uses_the_file_key(tmp_path: Path) -> None:
    bad = _record(0)
    del bad["_id"]
    with pytest.raises(DataError) as info:
        load_hotpotqa(_write_jsonl(tmp_path / "a.jsonl", [bad]))
    assert info.value.field == "_id"


def test_wrong_type_gives_field_path(tmp_path: Path) -> None:
    bad = _record(0)
    bad["context"][3][1] = "not a list of sentences"
    path = _write_jsonl(tmp_path / "a.jsonl", [_record(1), _record(2), bad])
    with pytest.raises(DataError) as info:
        load_hotpotqa(path)
    assert (info.value.line, info.value.field) == (3, "context.3.1")
    assert "list" in str(info.value)


def test_wrong_type_deep_path_and_id_type(tmp_path: Path) -> None:
    bad = _record(0)
    bad["supporting_facts"][1][1] = "first"
    with pytest.raises(DataError) as info:
        load_hotpotqa(_write_jsonl(tmp_path / "a.jsonl", [bad]))
    assert info.value.field == "supporting_facts.1.1"
    with pytest.raises(DataError) as info:
        load_hotpotqa(_write_jsonl(tmp_path / "b.jsonl", [_record(0, _id=123)]))
    assert info.value.field == "_id"


def test_several_problems_are_counted(tmp_path: Path) -> None:
    bad = _record(0)
    del bad["question"], bad["answer"]
    with pytest.raises(DataError, match="1 more problem"):
        load_hotpotqa(_write_jsonl(tmp_path / "a.jsonl", [bad]))


def test_non_object_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "a.jsonl", [_record(0), [1, 2]])
    with pytest.raises(DataError, match=r":2: expected a JSON object, got an array"):
        load_hotpotqa(path)


def test_missing_file_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_hotpotqa(tmp_path / "nope.jsonl")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(_record(0)).encode() + b"\n" + b'{"_id": "caf\xe9"}\n')
    with pytest.raises(DataError, match="UTF-8") as info:
        load_hotpotqa(path)
    assert info.value.line == 2


@pytest.mark.data
def test_full_shared_file() -> None:
    path = SHARED_DATA / "hotpotqa_distractor_500.jsonl"
    if not path.is_file():
        pytest.skip(f"shared HotpotQA data not found at {path} (../shared/data is absent)")
    records = load_hotpotqa(path)
    assert len(records) == 500
    assert {r.type for r in records} == {"bridge", "comparison"}
    assert len(load_hotpotqa(path, limit=7)) == 7
