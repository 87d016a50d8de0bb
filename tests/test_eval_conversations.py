"""Evaluation of conversation pipelines: LoCoMo metrics per category with CIs, Recall@k,
op counts and malformed decisions, ingest traces with bank diffs, the judge, and refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from memfactory_core.config import load_config
from memfactory_core.errors import DataError, MemFactoryError
from memfactory_core.eval import EvalConfig, evaluate
from memfactory_core.eval.config import ModelConfig
from memfactory_core.llm.base import LLMBackend
from memfactory_core.metrics.locomo import bleu1, locomo_f1
from memfactory_core.paths import CONFIGS_DIR, SAMPLE_DATA_DIR
from tests.fakes import ScriptedLLM

SAMPLE = SAMPLE_DATA_DIR / "conversations_sample.json"
SHARED_LOCOMO = SAMPLE_DATA_DIR.parent.parent.parent / "shared" / "data" / "locomo10.json"


def scripted(text: str) -> str:
    """Extractor: the turn itself is the fact. Manager: ADD, except a malformed reply for
    facts about Lindholm. Answer agent: the first memory's text."""
    if "worth remembering" in text:
        line = re.search(r"^\[D\d+:\d+\] (.*)$", text, re.M)
        return line.group(1) if line else "NONE"
    if "New fact" in text:
        if "Lindholm" in text:
            return "sure, add it"
        fact = re.search(r"New fact \(said on [^)]*\): (.*)$", text, re.S).group(1).strip()
        return json.dumps({"memory": [{"event": "ADD", "text": fact}]})
    if "Reply with one word" in text:
        return "CORRECT" if "Lindholm" in text.split("Generated answer:")[1] else "WRONG"
    first = re.search(r"^- \([^)]*\) (.*)$", text, re.M)
    return f"notes\nAnswer: {first.group(1) if first else 'Not mentioned in the conversation'}"


def loader_for(llm: LLMBackend, calls: list[str] | None = None):
    def load(mc: ModelConfig) -> LLMBackend:
        if calls is not None:
            calls.append(mc.model)
        return llm
    return load


def config(tmp_path: Path, *overrides: str, path: Path = SAMPLE) -> EvalConfig:
    return load_config(CONFIGS_DIR / "eval_memory_r1_tiny.yaml",
                       [f"data.path={path}", f"output_dir={tmp_path}",
                        "pipeline_params.memory.embedder=hashing-64",
                        "pipeline_params.fact_extractor.max_new_tokens=400",
                        "pipeline_params.memory_manager.max_new_tokens=400",
                        "pipeline_params.answer_agent.max_new_tokens=400", *overrides],
                       EvalConfig)


def test_scores_per_category_recall_ops_and_traces(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    results = evaluate(cfg, loader=loader_for(ScriptedLLM(scripted)), progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["summary"]["n"] == 23
    summary = on_disk["summary"]
    records = on_disk["records"]
    for r in records:
        assert r["locomo_f1"] == pytest.approx(locomo_f1(r["prediction"], r["answers"][0],
                                                         r["category"]))
        assert r["bleu1"] == pytest.approx(bleu1(r["prediction"], r["answers"][0]))
        assert 0.0 <= r["recall@5"] <= r["recall@10"] <= 1.0
        assert r["ingest_id"] == r["episode_id"]
        assert [s["component"] for s in r["trace"]["steps"]] == ["retriever", "answer_agent"]
    assert set(summary["by_category"]) == {"1", "2", "3", "4"}
    assert summary["by_category"]["1"]["name"] == "multi-hop"
    for part in [summary, *summary["by_category"].values()]:
        for key in ("locomo_f1", "bleu1", "recall@5", "recall@10", "f1"):
            lo, hi = part[f"{key}_ci95"]
            assert lo <= part[key] <= hi
    assert summary["by_category"]["4"]["n"] == sum(r["category"] == 4 for r in records)
    assert summary["locomo_f1"] > 0.0 and summary["recall@10"] > 0.5
    # the two turns naming Lindholm got malformed replies: counted, visible, bank unchanged
    memory = summary["memory"]
    assert memory["malformed"] == 2 and memory["decisions"] == 49  # one fact per turn
    assert memory["ops"]["ADD"] == 47 and memory["malformed_rate"] == pytest.approx(2 / 49)
    episode = on_disk["episodes"]["sample-1"]
    manage = [s for s in episode["steps"] if s["component"] == "memory_manager"]
    bad = [s for s in manage if s["extra"]["malformed"]]
    assert len(bad) == 2 and bad[0]["memory_diff"] is None
    assert bad[0]["output"][0]["raw"] == "sure, add it"
    assert "no JSON object" in bad[0]["output"][0]["error"]
    good = manage[0]
    assert good["memory_diff"]["added"][0]["turn_ids"] == ["D1:1"]
    assert len(episode["memory"]["entries"]) == episode["ops"]["ADD"]
    assert all("Lindholm" not in e["text"] for e in episode["memory"]["entries"])
    assert results["summary"]["n"] == 23


def test_llm_judge_and_existing_results_are_refused(tmp_path: Path) -> None:
    calls: list[str] = []
    cfg = config(tmp_path, "data.limit=5", "judge.model=judge", "judge.backend=openai")
    summary = evaluate(cfg, loader=loader_for(ScriptedLLM(scripted), calls),
                       progress=False)["summary"]
    assert calls == ["tiny-random", "judge"]
    assert 0.0 <= summary["llm_judge"] <= 1.0 and "llm_judge_ci95" in summary
    with pytest.raises(MemFactoryError, match="already exists; set overwrite=true"):
        evaluate(cfg, loader=loader_for(ScriptedLLM(scripted)), progress=False)
    cfg = config(tmp_path, "data.limit=2", "overwrite=true")
    assert evaluate(cfg, loader=loader_for(ScriptedLLM(scripted)),
                    progress=False)["summary"]["n"] == 2


def test_bad_data_fails_before_any_model_loads(tmp_path: Path) -> None:
    records = json.loads(SAMPLE.read_text())
    del records[1]["qa"][2]["answer"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    calls: list[str] = []
    with pytest.raises(DataError, match=r"conversation 'sample-2'.*qa\[2\]\.answer"):
        evaluate(config(tmp_path / "out", path=bad), loader=loader_for(ScriptedLLM(), calls),
                 progress=False)
    assert calls == []
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eval_memory_r1_tiny.yaml", "eval_rag_tiny.yaml"])
def test_shipped_tiny_configs_run_on_the_sample(tmp_path: Path, name: str) -> None:
    cfg = load_config(CONFIGS_DIR / name, [f"output_dir={tmp_path}", "data.limit=4"],
                      EvalConfig)
    results = evaluate(cfg, progress=False)
    assert results["summary"]["n"] == 4
    episode = next(iter(results["episodes"].values()))
    assert episode["memory"]["embedding"]["dim"] == 384
    writes = [s for s in episode["steps"]
              if s["component"] in ("memory_manager", "add_all")]
    assert writes and all("ops" in s["extra"] for s in writes)
    if name.startswith("eval_rag"):
        assert any(s["memory_diff"] for s in writes)
    else:
        decisions = [d for s in writes for d in s["output"]]
        assert decisions and all("raw" in d and "valid" in d for d in decisions)


@pytest.mark.slow
@pytest.mark.data
def test_tiny_memory_r1_on_locomo_conv30_first_three_sessions(tmp_path: Path) -> None:
    if not SHARED_LOCOMO.is_file():
        pytest.skip(f"LoCoMo not found at {SHARED_LOCOMO} (../shared/data is absent)")
    cfg = load_config(CONFIGS_DIR / "eval_memory_r1_tiny.yaml", [
        f"data.path={SHARED_LOCOMO}", "data.conversations=[conv-30]", "data.sessions=3",
        f"output_dir={tmp_path}", "pipeline_params.fact_extractor.max_facts=1"], EvalConfig)
    results = evaluate(cfg, progress=False)
    assert results["summary"]["n"] == 24
    assert results["summary"]["memory"]["decisions"] > 0
    assert set(results["episodes"]) == {"conv-30"}
