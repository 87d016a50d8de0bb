"""Evaluation: run a pipeline over a dataset, score every answer, summarise with CIs."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from memfactory_core.data.loaders import load_episodes
from memfactory_core.errors import Problem, ValidationError
from memfactory_core.eval.config import EvalConfig, ModelConfig, PipelineRunConfig
from memfactory_core.llm.base import LLMBackend
from memfactory_core.metrics.qa import exact_match, f1, sub_exact_match
from memfactory_core.metrics.stats import summarize
from memfactory_core.pipeline.runtime import PipelineRuntime, RolloutResult
from memfactory_core.pipeline.spec import ResolvedPipeline, load_spec, validate_spec

METRICS: dict[str, Callable[[str, list[str]], float]] = {
    "em": exact_match,
    "sub_em": sub_exact_match,
    "f1": f1,
}

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


def score_results(results: list[RolloutResult], docs: int | None) -> list[dict[str, Any]]:
    """Group rollout results by question into records with avg@k scores."""
    by_question: dict[tuple[str, str], list[RolloutResult]] = {}
    for r in results:
        by_question.setdefault((r.episode.id, r.qa.id), []).append(r)
    records = []
    for (episode_id, _), group in by_question.items():
        group.sort(key=lambda r: r.sample)
        qa = group[0].qa
        samples = []
        for r in group:
            pred = r.answer or ""
            sample: dict[str, Any] = {"prediction": pred, "boxed": r.boxed}
            sample.update({name: fn(pred, qa.answers) for name, fn in METRICS.items()})
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
        for name in [*METRICS, "boxed"]:
            record[name] = sum(float(s[name]) for s in samples) / len(samples)
        record["document_tokens"] = group[0].trace.steps[0].extra.get("document_tokens")
        record["meta"] = group[0].episode.meta
        record["samples"] = samples
        record["trace"] = group[0].trace.model_dump(mode="json")
        if len(group) > 1:
            for s, r in zip(samples[1:], group[1:], strict=True):
                s["trace"] = r.trace.model_dump(mode="json")
        records.append(record)
    return records


def summarize_records(records: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    summary = summarize({name: [r[name] for r in records] for name in METRICS})
    n = len(records)
    summary["boxed_rate"] = sum(r["boxed"] for r in records) / n if n else float("nan")
    summary["n"] = n
    tokens = [r["document_tokens"] for r in records if r.get("document_tokens") is not None]
    summary["mean_document_tokens"] = sum(tokens) / len(tokens) if tokens else None
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


def evaluate(
    config: EvalConfig,
    loader: BackendLoader = default_loader,
    progress: bool = True,
    runtime: PipelineRuntime | None = None,
    on_batch: Callable[[int | None, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation a config describes; write and return ``results.json``'s content.

    ``on_batch(docs, done, total)`` is called after each batch of questions (a background
    run logs it)."""
    pipeline = runtime.pipeline if runtime is not None else resolve_pipeline(config)
    runtime = runtime or build_runtime(config, pipeline, loader)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_records: list[dict[str, Any]] = []
    by_docs: dict[str, Any] = {}
    started = time.perf_counter()
    excluded = config.data.exclude_ids()
    for docs in config.data.doc_counts:
        episodes = load_episodes(
            config.data.path, format=config.data.format, n_docs=docs,
            limit=config.data.limit, seed=config.data.seed, exclude_ids=excluded,
        )
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
            records.extend(score_results(results, docs))
            if on_batch is not None:
                on_batch(docs, len(records), len(episodes))
        by_docs[str(docs)] = summarize_records(records, time.perf_counter() - t0)
        all_records.extend(records)
    summary = summarize_records(all_records, time.perf_counter() - started)
    if len(by_docs) > 1:
        summary["by_docs"] = by_docs
    summary["samples"] = config.samples
    summary["config"] = config.model_dump(mode="json")
    summary["pipeline"] = pipeline.spec.model_dump(mode="json")
    results_doc = {"summary": summary, "records": all_records}
    _write_json(out_dir / "results.json", results_doc)
    return results_doc


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)
