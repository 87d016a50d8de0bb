"""MemAgent eval JSON / training parquet loading, format detection and load_episodes errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from memfactory_core.data import (
    FORMATS,
    detect_format,
    load_episodes,
    load_memagent_json,
    load_memagent_parquet,
)
from memfactory_core.errors import DataError, MemFactoryError
from memfactory_core.paths import SAMPLE_DATA_DIR
from tests.fakes import CharTokenizer

CONTEXT = "Document 1:\nParis\nParis is the capital of France.\n\nDocument 2:\nOslo\nOslo is cold."


def eval_item(i: int, **changes: object) -> dict:
    item = {"context": CONTEXT, "input": f"Question {i}?", "answers": [f"answer {i}"],
            "num_docs": 2, "index": i}
    item.update(changes)
    return item


def write_eval(path: Path, items: list[dict]) -> Path:
    # MemAgent writes its eval files with json.dump(..., indent=4)
    path.write_text(json.dumps(items, indent=4), encoding="utf-8")
    return path


def verl_row(i: int) -> dict:
    return {
        "data_source": "hotpotqa",
        "prompt": [{"role": "user", "content": f"Question {i}?"}],
        "context": CONTEXT,
        "ability": "memory",
        "reward_model": {"style": "rule", "ground_truth": [f"answer {i}", f"alt {i}"]},
        "extra_info": {"index": i, "question": f"Question {i}?", "num_docs": 2},
    }


def test_eval_json(tmp_path: Path) -> None:
    path = write_eval(tmp_path / "eval_2.json", [eval_item(0), eval_item(1, answers="single")])
    episodes = load_memagent_json(path, tokenizer=CharTokenizer())
    assert [e.id for e in episodes] == ["0", "1"]
    assert episodes[0].context == CONTEXT
    assert episodes[0].questions[0].question == "Question 0?"
    assert episodes[0].questions[0].answers == ["answer 0"]
    assert episodes[1].questions[0].answers == ["single"]
    meta = episodes[0].meta
    assert meta["num_docs"] == 2 and meta["chars"] == len(CONTEXT) == meta["tokens"]
    assert meta["source"] == "memagent_json"


def test_eval_jsonl_ids_and_limit(tmp_path: Path) -> None:
    items = [eval_item(0, _id="a"), eval_item(1, id="b"), eval_item(2)]
    del items[2]["index"]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    assert [e.id for e in load_memagent_json(path)] == ["a", "b", "eval-2"]
    assert len(load_memagent_json(path, limit=2)) == 2


def test_eval_missing_question_names_field_and_line(tmp_path: Path) -> None:
    bad = eval_item(1)
    del bad["input"]
    path = write_eval(tmp_path / "eval.json", [eval_item(0), bad])
    with pytest.raises(DataError) as info:
        load_memagent_json(path)
    err = info.value
    text = path.read_text().splitlines()
    assert text[err.line - 1] == "    {"
    assert err.line > 2 and err.field == "input"
    assert "missing the question" in str(err)


def test_eval_wrong_types(tmp_path: Path) -> None:
    path = write_eval(tmp_path / "a.json", [eval_item(0, answers=["ok", 3])])
    with pytest.raises(DataError) as info:
        load_memagent_json(path)
    assert (info.value.line, info.value.field) == (2, "answers.1")
    path = write_eval(tmp_path / "b.json", [eval_item(0, context=["not", "text"])])
    with pytest.raises(DataError, match="expected a string") as info:
        load_memagent_json(path)
    assert info.value.field == "context"
    path = write_eval(tmp_path / "c.json", [eval_item(0, answers=[])])
    with pytest.raises(DataError, match="empty"):
        load_memagent_json(path)


def test_eval_duplicate_ids(tmp_path: Path) -> None:
    path = write_eval(tmp_path / "a.json", [eval_item(0), eval_item(0)])
    with pytest.raises(DataError, match="duplicate id '0'"):
        load_memagent_json(path)


def test_parquet_verl_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    pd.DataFrame([verl_row(i) for i in range(3)]).to_parquet(path)
    episodes = load_memagent_parquet(path)
    assert [e.id for e in episodes] == ["0", "1", "2"]
    assert episodes[1].questions[0].question == "Question 1?"
    assert episodes[1].questions[0].answers == ["answer 1", "alt 1"]
    assert episodes[1].meta["num_docs"] == 2
    assert episodes[1].meta["data_source"] == "hotpotqa"
    assert len(load_memagent_parquet(path, limit=1)) == 1


def test_parquet_prompt_only(tmp_path: Path) -> None:
    row = verl_row(0)
    del row["extra_info"]
    path = tmp_path / "train.parquet"
    pd.DataFrame([row]).to_parquet(path)
    (episode,) = load_memagent_parquet(path)
    assert episode.questions[0].question == "Question 0?"
    assert episode.id == "train-0"


def test_parquet_flat_rows(tmp_path: Path) -> None:
    path = tmp_path / "flat.parquet"
    pd.DataFrame({"context": [CONTEXT, CONTEXT], "question": ["q1?", "q2?"],
                  "answers": [["a1"], ["a2", "b2"]]}).to_parquet(path)
    episodes = load_memagent_parquet(path)
    assert [e.questions[0].answers for e in episodes] == [["a1"], ["a2", "b2"]]
    assert [e.id for e in episodes] == ["flat-0", "flat-1"]


def test_parquet_errors_name_the_row(tmp_path: Path) -> None:
    rows = [verl_row(0), verl_row(1)]
    rows[1]["reward_model"] = {"style": "rule", "ground_truth": None}
    path = tmp_path / "bad.parquet"
    pd.DataFrame(rows).to_parquet(path)
    with pytest.raises(DataError) as info:
        load_memagent_parquet(path)
    assert info.value.line == 2
    assert "reward_model.ground_truth" in str(info.value)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_memagent_parquet(garbage)


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format(SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl") == "hotpotqa"
    assert detect_format(write_eval(tmp_path / "e.json", [eval_item(0)])) == "memagent_json"
    path = tmp_path / "t.parquet"
    pd.DataFrame([verl_row(0)]).to_parquet(path)
    assert detect_format(path) == "memagent_parquet"
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1}\n')
    with pytest.raises(DataError, match="cannot tell the data format"):
        detect_format(odd)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        detect_format(empty)


def test_load_episodes_dispatch(tmp_path: Path) -> None:
    path = write_eval(tmp_path / "eval_2.json", [eval_item(i) for i in range(4)])
    assert len(load_episodes(path, limit=3)) == 3
    assert len(load_episodes(path, format="memagent_json", n_docs=2)) == 4
    with pytest.raises(MemFactoryError, match=r"n_docs=50 applies to HotpotQA files only"):
        load_episodes(path, n_docs=50)
    parquet = tmp_path / "t.parquet"
    pd.DataFrame([verl_row(0)]).to_parquet(parquet)
    assert load_episodes(parquet)[0].questions[0].answers == ["answer 0", "alt 0"]


def test_unknown_format_lists_known_ones(tmp_path: Path) -> None:
    with pytest.raises(MemFactoryError) as info:
        load_episodes(tmp_path / "x.json", format="squad")
    for name in FORMATS:
        assert name in str(info.value)
