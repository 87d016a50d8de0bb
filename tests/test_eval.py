"""Evaluation end to end on tiny-random and the shipped sample; config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfactory_core.config import load_config
from memfactory_core.errors import MemFactoryError, ValidationError
from memfactory_core.eval import EvalConfig, evaluate, resolve_pipeline
from memfactory_core.paths import CONFIGS_DIR, SAMPLE_DATA_DIR

TINY = CONFIGS_DIR / "eval_memagent_tiny.yaml"
SAMPLE = SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl"


def tiny_config(tmp_path: Path, *overrides: str) -> EvalConfig:
    return load_config(TINY, [f"data.path={SAMPLE}", f"output_dir={tmp_path}", *overrides],
                       EvalConfig)


def test_tiny_eval_writes_results(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "data.docs=50", "data.limit=3")
    results = evaluate(cfg, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["summary"]["n"] == 3
    summary = on_disk["summary"]
    for key in ("em", "sub_em", "f1"):
        assert 0.0 <= summary[key] <= 1.0
        lo, hi = summary[f"{key}_ci95"]
        assert lo <= summary[key] <= hi
    assert summary["config"]["data"]["docs"] == 50
    assert len(on_disk["records"]) == 3
    for record in on_disk["records"]:
        assert {"id", "question", "answers", "prediction", "em", "sub_em", "f1", "trace"} <= set(
            record)
        writes = [s for s in record["trace"]["steps"] if s["component"] == "memory_writer"]
        assert len(writes) >= 2
        assert record["document_tokens"] > 4000
    assert results["summary"]["n"] == 3


def test_doc_count_list_gives_one_summary_each(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "data.docs=[10,20]", "data.limit=3", "batch_size=2",
                      "pipeline_params.token_chunker.chunk_tokens=2000")
    seen: list[tuple[int | None, int, int]] = []
    summary = evaluate(cfg, progress=False,
                       on_batch=lambda *a: seen.append(a))["summary"]
    assert seen == [(10, 2, 3), (10, 3, 3), (20, 2, 3), (20, 3, 3)]
    assert set(summary["by_docs"]) == {"10", "20"}
    assert summary["by_docs"]["10"]["n"] == 3 and summary["n"] == 6
    assert (summary["by_docs"]["20"]["mean_document_tokens"]
            > summary["by_docs"]["10"]["mean_document_tokens"])


def test_avg_at_k_with_sampling(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "data.docs=5", "data.limit=2", "samples=3",
                      "generation.temperature=1.0")
    records = evaluate(cfg, progress=False)["records"]
    assert len(records) == 2
    assert all(len(r["predictions"]) == 3 and "trace" in r["samples"][1] for r in records)


def test_config_errors_name_their_location(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        tiny_config(tmp_path, "data.docs=-1", "data.colour=red", "samples=0")
    where = {p.location for p in info.value.problems}
    assert {"data.docs", "data.colour", "samples"} <= where
    with pytest.raises(MemFactoryError, match="not found"):
        load_config(tmp_path / "missing.yaml", [], EvalConfig)
    with pytest.raises(MemFactoryError, match="key=value"):
        load_config(TINY, ["data.docs"], EvalConfig)


def test_pipeline_params_must_name_a_component(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, "pipeline_params.retriever.k=3")
    with pytest.raises(ValidationError, match=r"pipeline_params\.retriever"):
        resolve_pipeline(cfg)
    cfg = tiny_config(tmp_path, "pipeline_params.token_chunker.chunk_tokens=1")
    with pytest.raises(ValidationError, match="chunk_tokens"):
        resolve_pipeline(cfg)
