"""``memfactory submit`` refuses, before queueing, every config that would fail in the
worker, with one error naming each problem and where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.store import RunStore
from tests.test_jobs_cli import cli, db  # noqa: F401 (the fixture)
from tests.test_jobs_scheduler import TINY_TRAIN

TINY_EVAL = str(Path(TINY_TRAIN).parent / "eval_memagent_tiny.yaml")


def refused(capsys: pytest.CaptureFixture[str], store: RunStore, *args: str) -> str:
    code, out, err = cli(capsys, "submit", *args)
    assert code == 2, (out, err)
    assert "Traceback" not in err and out == ""
    assert store.list_runs() == [], "nothing is queued"
    return " ".join(err.split())


def test_a_pipeline_file_with_its_slots_in_the_wrong_order(
        db: RunStore, capsys: pytest.CaptureFixture[str],  # noqa: F811
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMFACTORY_DATA_ROOTS", str(tmp_path))
    pipeline = tmp_path / "backwards.yaml"
    pipeline.write_text("name: backwards\nmemory: {type: text}\ningest:\n"
                        "  - {component: memory_writer, role: policy}\n"
                        "  - {component: token_chunker}\n"
                        "query:\n  - {component: boxed_answerer, role: policy}\n")
    err = refused(capsys, db, "eval", TINY_EVAL, f"pipeline={pipeline}")
    assert "cannot run" in err and "pipeline: ingest[0] memory_writer" in err


def test_a_missing_data_file(db: RunStore, capsys: pytest.CaptureFixture[str],  # noqa: F811
                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMFACTORY_DATA_ROOTS", str(tmp_path))
    err = refused(capsys, db, "eval", TINY_EVAL, f"data.path={tmp_path / 'nope.jsonl'}")
    assert f"data.path: no such file: {tmp_path / 'nope.jsonl'}" in err


def test_an_unknown_model(db: RunStore, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    err = refused(capsys, db, "train", TINY_TRAIN, "model.model=no-such-model")
    assert "model.model: unknown model 'no-such-model'" in err and "tiny-random" in err


def test_pipeline_params_for_a_component_the_pipeline_lacks(
        db: RunStore, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    err = refused(capsys, db, "eval", TINY_EVAL, "pipeline_params.bm25_retriever.top_k=1")
    assert "pipeline_params.bm25_retriever: no such component in the pipeline" in err


def test_a_parameter_of_the_wrong_type(db: RunStore,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, db, "eval", TINY_EVAL, "pipeline_params.token_chunker.chunk_tokens=abc")
    assert "token_chunker: params.chunk_tokens: Input should be a valid integer" in err


def test_a_misspelt_memory_parameter(db: RunStore,  # noqa: F811
                                     capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, db, "eval", TINY_EVAL, "pipeline_params.memory.max_tokns=5")
    assert "memory.params.max_tokns" in err


def test_every_problem_is_listed_at_once(db: RunStore,  # noqa: F811
                                         capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(capsys, db, "eval", TINY_EVAL, "data.path=/nonexistent.jsonl",
                  "model=no-such-model", "pipeline_params.token_chunker.chunk_tokens=abc")
    assert "3 problem(s)" in err


def test_a_valid_config_is_still_queued(db: RunStore,  # noqa: F811
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "submit", "eval", TINY_EVAL, "data.limit=1")
    assert code == 0, err
    assert [r.id for r in db.list_runs()] == [int(out)]
