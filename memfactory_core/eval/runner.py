"""Evaluation: run a pipeline over a dataset, score every answer, summarise with CIs.

Every question gets SQuAD EM, sub-EM and F1. Conversation questions also get LoCoMo's
official F1 (by category), BLEU-1 and, when the pipeline retrieves, Recall@k against their
evidence turn ids; an optional LLM judge adds ``llm_judge``. Summaries give each metric
overall and per category with 95% bootstrap intervals, and the memory operations counted
over every ingest (op counts, malformed decisions). A conversation's ingest trace (every
manager decision with the bank's diff) is written once under ``episodes``; each record
names it by ``ingest_id``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from memfactory_core.data.episode import Episode
from memfactory_core.data.loaders import load_episodes
from memfactory_core.errors import MemFactoryError, Problem, ValidationError
from memfactory_core.eval.config import EvalConfig, ModelConfig, PipelineRunConfig
from memfactory_core.eval.judge import judge_answers
from memfactory_core.llm.base import LLMBackend
from memfactory_core.metrics.locomo import bleu1, locomo_f1, recall_at_k
from memfactory_core.metrics.qa import exact_match, f1, sub_exact_match
from memfactory_core.metrics.stats import summarize
from memfactory_core.pipeline.runtime import PipelineRuntime, RolloutResult
from memfactory_core.pipeline.spec import ResolvedPipeline, load_spec, validate_spec

METRICS: dict[str, Callable[[str, list[str]], float]] = {
    "em": exact_match,
    "sub_em": sub_exact_match,
    "f1": f1,
}
#: metrics of conversation questions, besides METRICS
CONVERSATION_METRICS = ("locomo_f1", "bleu1")

BackendLoader = Callable[[ModelConfig], LLMBackend]


def resolve_pipeline(config: PipelineRunConfig) -> ResolvedPipeline:
    """The config's pipeline with ``pipeline_params`` merged into its slots, validated."""
    spec = config.pipeline if isinstance(config.pipeline, dict) else load_spec(config.pipeline)
    spec = copy.deepcopy(spec if isinstance(spec, dict) else spec.model_dump())
    for target, params in config.pipeline_params.items():
        if target == "memory":
            spec.setdefault("memory", {}).setdefault("params", {}).update(params)
            continue
        slots = [s for lane in ("ingest", "query") for s in spec.get(lane, [])
                 if s.get("component") == target]
        if not slots:
            names = sorted({s.get("component") for lane in ("ingest", "query")
                            for s in spec.get(lane, [])})
            raise ValidationError("invalid pipeline_params", [Problem(
                f"pipeline_params.{target}",
                f"no such component in the pipeline (it has: {', '.join(map(str, names))}; "
                "or use 'memory')")])
        for slot in slots:
            slot.setdefault("params", {}).update(params)
    return validate_spec(spec)


def default_loader(mc: ModelConfig) -> LLMBackend:
    from memfactory_core.llm.models import load_backend

    return load_backend(mc.model, backend=mc.backend, **mc.options)


def build_runtime(
    config: PipelineRunConfig, pipeline: ResolvedPipeline, loader: BackendLoader = default_loader
) -> PipelineRuntime:
    main = loader(config.model)
    llms = {role: loader(config.roles[role]) if role in config.roles else main
            for role in pipeline.roles}
    return PipelineRuntime(pipeline, llms, sampling=config.generation.sampling(),
                           tokenizer=main.tokenizer)


def _retrieved_turns(result: RolloutResult) -> list[list[str]] | None:
    """Source turn ids of the entries the query lane retrieved, best first."""
    for step in reversed(result.trace.steps):
        found = step.extra.get("retrieved")
        if isinstance(found, list):
            return [list(e.get("turn_ids", [])) for e in found]
    return None


def _sample_scores(r: RolloutResult, recall_at: list[int]) -> dict[str, Any]:
    qa = r.qa
    pred = r.answer or ""
    scores: dict[str, Any] = {"prediction": pred, "boxed": r.boxed}
    scores.update({name: fn(pred, qa.answers) for name, fn in METRICS.items()})
    if r.episode.conversation is not None:
        gold = qa.answers[0] if qa.answers else ""
        abstention = bool(qa.meta.get("abstention"))
        scores["locomo_f1"] = locomo_f1(pred, gold, qa.category, abstention)
        scores["bleu1"] = bleu1(pred, gold)
        turns = _retrieved_turns(r)
        if turns is not None:
            for k in recall_at:
                scores[f"recall@{k}"] = recall_at_k(turns, qa.evidence, k)
    return scores


def _mean(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def score_results(results: list[RolloutResult], docs: int | None,
                  recall_at: list[int] | None = None,
                  judged: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """Group rollout results by question into records with avg@k scores.

    ``judged`` maps ``id(result)`` to an LLM judge's verdict."""
    recall_at = [5, 10] if recall_at is None else recall_at
    by_question: dict[tuple[str, str], list[RolloutResult]] = {}
    for r in results:
        by_question.setdefault((r.episode.id, r.qa.id), []).append(r)
    records = []
    for (episode_id, _), group in by_question.items():
        group.sort(key=lambda r: r.sample)
        qa = group[0].qa
        samples = []
        for r in group:
            sample = _sample_scores(r, recall_at)
            if judged is not None and id(r) in judged:
                sample["llm_judge"] = judged[id(r)]
            samples.append(sample)
        record: dict[str, Any] = {
            "id": qa.id,
            "episode_id": episode_id,
            "docs": docs,
            "question": qa.question,
            "answers": qa.answers,
            "prediction": samples[0]["prediction"],
            "predictions": [s["prediction"] for s in samples],
        }
        if qa.category is not None:
            record["category"] = qa.category
            if "category_name" in qa.meta:
                record["category_name"] = qa.meta["category_name"]
        if qa.evidence:
            record["evidence"] = qa.evidence
        names = [n for n in samples[0] if n not in ("prediction",)]
        for name in names:
            record[name] = _mean([s.get(name) for s in samples])
        first = group[0]
        record["document_tokens"] = (first.ingest or first.trace.steps)[0].extra.get(
            "document_tokens") if (first.ingest or first.trace.steps) else None
        record["meta"] = first.episode.meta
        record["samples"] = samples
        record["trace"] = first.trace.model_dump(mode="json")
        if first.trace.ingest_id is not None:
            record["ingest_id"] = first.trace.ingest_id
        if len(group) > 1:
            for s, r in zip(samples[1:], group[1:], strict=True):
                s["trace"] = r.trace.model_dump(mode="json")
        records.append(record)
    return records


def memory_ops(steps: list[Any]) -> dict[str, Any]:
    """Memory operations counted over ingest steps: op counts, decisions, malformed ones."""
    ops: dict[str, int] = {}
    decisions = malformed = 0
    for step in steps:
        extra = step["extra"] if isinstance(step, dict) else step.extra
        for op, n in (extra.get("ops") or {}).items():
            ops[op] = ops.get(op, 0) + int(n)
        decisions += int(extra.get("decisions", 0))
        malformed += int(extra.get("malformed", 0))
    return {"ops": ops, "decisions": decisions, "malformed": malformed,
            "malformed_rate": malformed / decisions if decisions else None}


def episode_traces(results: list[RolloutResult]) -> dict[str, Any]:
    """Each shared ingest once: its steps (with memory diffs), its final memory, op counts."""
    out: dict[str, Any] = {}
    for r in results:
        key = r.trace.ingest_id
        if key is None or key in out:
            continue
        out[key] = {
            "episode_id": r.episode.id,
            "sample": r.sample,
            **memory_ops(r.ingest),
            "steps": [s.model_dump(mode="json") for s in r.ingest],
            "memory": r.memory.snapshot() if r.memory is not None else None,
        }
    return out


_SUMMARY_METRICS = ("em", "sub_em", "f1", "locomo_f1", "bleu1", "llm_judge")


def _metric_names(records: list[dict[str, Any]]) -> list[str]:
    names = [m for m in _SUMMARY_METRICS if any(r.get(m) is not None for r in records)]
    recalls = sorted({k for r in records for k in r if k.startswith("recall@")},
                     key=lambda k: int(k.split("@")[1]))
    return names + recalls


def _summarize_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    values = {name: [r[name] for r in records if r.get(name) is not None]
              for name in _metric_names(records)}
    out = summarize({k: v for k, v in values.items() if v})
    for k, v in values.items():
        if not v:
            out[k] = None
        elif k.startswith("recall@"):
            out[f"{k}_n"] = len(v)
    return out


def summarize_records(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    summary = _summarize_metrics(records)
    for name in METRICS:
        summary.setdefault(name, float("nan"))
        summary.setdefault(f"{name}_ci95", [float("nan"), float("nan")])
    n = len(records)
    summary["boxed_rate"] = sum(r["boxed"] for r in records) / n if n else float("nan")
    summary["n"] = n
    tokens = [r["document_tokens"] for r in records if r.get("document_tokens") is not None]
    summary["mean_document_tokens"] = sum(tokens) / len(tokens) if tokens else None
    categories = sorted({str(r["category"]) for r in records if r.get("category") is not None})
    if categories:
        summary["by_category"] = {}
        for cat in categories:
            subset = [r for r in records if str(r.get("category")) == cat]
            part = _summarize_metrics(subset)
            part["n"] = len(subset)
            name = subset[0].get("category_name")
            summary["by_category"][cat] = part if name is None else {"name": name, **part}
    summary["seconds"] = round(seconds, 3)
    summary["seconds_per_question"] = round(seconds / n, 3) if n else None
    return summary


class _Bar:
    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc = desc
        self.enabled = enabled
        self.bar: Any = None

    def start(self, total: int) -> None:
        if self.enabled:
            self.bar = tqdm(total=total, desc=self.desc, unit="step", dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(config: EvalConfig, docs: int | None, excluded: set[str]) -> list[Episode]:
    return load_episodes(
        config.data.path, format=config.data.format, n_docs=docs,
        limit=config.data.limit, seed=config.data.seed, exclude_ids=excluded,
        **config.data.load_options(),
    )


def _judge(judge: LLMBackend | None, results: list[RolloutResult]) -> dict[int, float] | None:
    if judge is None:
        return None
    items = [(r.qa.question, r.qa.answers[0] if r.qa.answers else "", r.answer or "")
             for r in results]
    return {id(r): v for r, v in zip(results, judge_answers(judge, items), strict=True)}


def evaluate(
    config: EvalConfig,
    loader: BackendLoader = default_loader,
    progress: bool = True,
    runtime: PipelineRuntime | None = None,
    on_batch: Callable[[int | None, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation a config describes; write and return ``results.json``'s content.

    The output folder and the data are checked before any model loads. An existing
    ``results.json`` is refused unless ``overwrite`` is set. ``on_batch(docs, done, total)``
    is called after each batch of questions (a background run logs it)."""
    out_dir = Path(config.output_dir)
    results_path = out_dir / "results.json"
    if results_path.exists() and not config.overwrite:
        raise MemFactoryError(f"{results_path} already exists; set overwrite=true to replace "
                              "it, or choose another output_dir")
    pipeline = runtime.pipeline if runtime is not None else resolve_pipeline(config)
    excluded = config.data.exclude_ids()
    doc_counts = config.data.doc_counts
    first_episodes = _load(config, doc_counts[0], excluded)
    runtime = runtime or build_runtime(config, pipeline, loader)
    judge = loader(config.judge) if config.judge is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    all_records: list[dict[str, Any]] = []
    episodes_doc: dict[str, Any] = {}
    by_docs: dict[str, Any] = {}
    started = time.perf_counter()
    for n, docs in enumerate(doc_counts):
        episodes = first_episodes if n == 0 else _load(config, docs, excluded)
        t0 = time.perf_counter()
        records: list[dict[str, Any]] = []
        for i in range(0, len(episodes), config.batch_size):
            group = episodes[i : i + config.batch_size]
            label = f"eval docs={docs}" if docs else "eval"
            if len(episodes) > config.batch_size:
                label += f" [{i // config.batch_size + 1}/{-(-len(episodes) // config.batch_size)}]"
            bar = _Bar(label, progress)
            try:
                results = runtime.run(group, samples=config.samples, progress=bar)
            finally:
                bar.close()
            records.extend(score_results(results, docs, config.recall_at,
                                         _judge(judge, results)))
            episodes_doc.update(episode_traces(results))
            if on_batch is not None:
                on_batch(docs, len(records), sum(len(e.questions) for e in episodes))
        by_docs[str(docs)] = summarize_records(records, time.perf_counter() - t0)
        all_records.extend(records)
    summary = summarize_records(all_records, time.perf_counter() - started)
    if episodes_doc:
        summary["memory"] = memory_ops([s for e in episodes_doc.values() for s in e["steps"]])
        summary["memory"]["episodes"] = len(episodes_doc)
    if len(by_docs) > 1:
        summary["by_docs"] = by_docs
    summary["samples"] = config.samples
    summary["config"] = config.model_dump(mode="json")
    summary["pipeline"] = pipeline.spec.model_dump(mode="json")
    results_doc: dict[str, Any] = {"summary": summary, "records": all_records}
    if episodes_doc:
        results_doc["episodes"] = episodes_doc
    _write_json(results_path, results_doc)
    return results_doc


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=_json_default),
                   encoding="utf-8")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
