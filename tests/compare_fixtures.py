"""Evaluation results shaped as ``memfactory eval`` writes them, for the comparison tests and
benchmark (records from seeded scores; the summary from the runner's own code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from memfactory_core.eval.runner import summarize_records


def make_records(n: int, accuracy: float, seed: int, docs: list[int] | None = None,
                 categories: list[int] | None = None, trace_chars: int = 200,
                 shared_seed: int = 1234) -> list[dict[str, Any]]:
    """``n`` questions per context length; question difficulty is shared between runs (same
    ``shared_seed``) so that runs' scores correlate as real runs' do."""
    rng = np.random.default_rng(seed)
    difficulty = np.random.default_rng(shared_seed).random(n)
    records = []
    for d in docs or [None]:
        for i in range(n):
            correct = float(rng.random() < accuracy * (0.5 + difficulty[i]))
            f1 = min(1.0, correct * 0.8 + float(rng.random()) * 0.2)
            qid = f"q{i:05d}"
            records.append({
                "id": qid, "episode_id": f"{qid}@{d}" if d else qid, "docs": d,
                "question": f"Question {i}?", "answers": [f"answer {i}"],
                "prediction": f"answer {i}" if correct else "something else",
                "predictions": ["x"], "em": correct, "sub_em": correct, "f1": f1,
                "boxed": float(rng.random() < 0.5), "document_tokens": 1000 + i,
                "meta": {"source": "test", **({"category": categories[i % len(categories)]}
                                              if categories else {})},
                "samples": [{"prediction": "x", "em": correct}],
                "trace": {"steps": [{"lane": "query", "component": "boxed_answerer",
                                     "unit": None, "prompt": [{"role": "user",
                                                               "content": "p" * trace_chars}],
                                     "output": f"out {i}", "memory_after": None}]},
            })
    return records


def results_doc(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    summary = summarize_records(records, seconds=1.0)
    docs = sorted({r["docs"] for r in records if r["docs"] is not None})
    if len(docs) > 1:
        summary["by_docs"] = {str(d): summarize_records([r for r in records if r["docs"] == d],
                                                        1.0) for d in docs}
    summary["samples"] = 1
    summary["config"] = config
    summary["pipeline"] = {"name": "memagent"}
    return {"summary": summary, "records": records}


def write_results(path: Path, records: list[dict[str, Any]],
                  config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results_doc(records, config)), encoding="utf-8")
    return path


def eval_config(model: str, **extra: Any) -> dict[str, Any]:
    return {"pipeline": "memagent", "model": {"model": model, "backend": "transformers"},
            "data": {"path": "held_out.jsonl", "docs": 50, "limit": 100, "seed": 0},
            "generation": {"temperature": 0.0}, "samples": 1, "output_dir": f"/runs/{model}",
            **extra}
