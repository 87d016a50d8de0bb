"""Recall@k of the retriever alone against the retriever followed by the reranker, on the same
questions, with the paired bootstrap interval of the difference.

Both rankings come from one retrieval per question: the retriever's top-K, and the reranker's
top-M of it (no noise). Recall@k is the share of the question's evidence turn ids found among
the source turns of the first k memories. Only questions with evidence ids count.

    memfactory recall CONFIG [key=value ...]
    python -m memfactory_core.rerank.evaluate CONFIG [key=value ...]

read an evaluation config (``pipeline_params.reranker.checkpoint=...`` names the trained
reranker) and write ``OUTPUT_DIR/recall.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from memfactory_core.components.reranker import Reranker
from memfactory_core.components.retriever import Retriever
from memfactory_core.eval.config import EvalConfig
from memfactory_core.eval.runner import (
    BackendLoader,
    build_runtime,
    default_loader,
    resolve_pipeline,
)
from memfactory_core.metrics.paired import paired_bootstrap
from memfactory_core.rerank.candidates import (
    build_memories,
    make_component,
    query_slots,
    recall_at,
    retrieve_queries,
    share_embeddings,
)


def rerank_queries(reranker: Reranker, queries: list[Any], batch_size: int = 256
                   ) -> list[list[dict[str, Any]]]:
    """The reranker's selection for every query (deterministic top-M), in batches."""
    from memfactory_core.components.base import Port, RolloutState

    out: list[list[dict[str, Any]]] = []
    for start in range(0, len(queries), batch_size):
        part = queries[start:start + batch_size]
        states = [RolloutState(id=q.qa.id, memory=q.memory,
                               values={Port.QUESTION: q.qa.question,
                                       Port.RETRIEVED: q.candidates}) for q in part]
        reranker.run(states)
        out.extend(s.values[Port.RETRIEVED] for s in states)
    return out


def compare_recall(config: EvalConfig, ks: list[int] | None = None,
                   loader: BackendLoader = default_loader) -> dict[str, Any]:
    """Recall@k of the retriever alone vs with the reranker, per k, with paired CIs."""
    from memfactory_core.data.loaders import load_episodes

    t0 = time.perf_counter()
    pipeline = resolve_pipeline(config)
    retriever_slot, reranker_slot, _ = query_slots(pipeline)
    runtime = build_runtime(config, pipeline, loader)
    sampling = config.generation.sampling()
    d = config.data
    episodes = load_episodes(d.path, format=d.format, limit=d.limit, seed=d.seed,
                             exclude_ids=d.exclude_ids(), **d.load_options())
    memories = build_memories(runtime, episodes, sampling)
    retriever = make_component(retriever_slot, runtime, sampling)
    reranker = make_component(reranker_slot, runtime, sampling)
    assert isinstance(retriever, Retriever) and isinstance(reranker, Reranker)
    share_embeddings(memories, [qa.question for ep in episodes for qa in ep.questions])
    t1 = time.perf_counter()
    queries = retrieve_queries(retriever, episodes, memories, need_evidence=True)
    t2 = time.perf_counter()
    selected = rerank_queries(reranker, queries)
    t3 = time.perf_counter()
    top_m = reranker.params.top_m  # type: ignore[attr-defined]
    ks = sorted(set(ks or [k for k in config.recall_at if k <= top_m] or [top_m]))
    result: dict[str, Any] = {
        "n": len(queries), "episodes": [ep.id for ep in episodes],
        "top_k": retriever.params.top_k,  # type: ignore[attr-defined]
        "top_m": top_m, "checkpoint": reranker.params.checkpoint,  # type: ignore[attr-defined]
        "seconds": {"memory": round(t1 - t0, 2), "retrieval": round(t2 - t1, 2),
                    "rerank": round(t3 - t2, 2)},
        "recall": {},
    }
    for k in ks:
        base = [recall_at(q.candidates, q.qa.evidence, k) for q in queries]
        other = [recall_at(s, q.qa.evidence, k) for q, s in zip(queries, selected, strict=True)]
        diff = paired_bootstrap(base, other, seed=config.data.seed)
        result["recall"][f"recall@{k}"] = {"retriever": diff.base_mean,
                                           "reranker": diff.other_mean,
                                           "paired": diff.as_dict()}
    by_cat: dict[str, dict[str, float]] = {}
    for cat in sorted({str(q.qa.category) for q in queries}):
        rows = [(q, s) for q, s in zip(queries, selected, strict=True)
                if str(q.qa.category) == cat]
        k = max(ks)
        by_cat[cat] = {
            "n": len(rows),
            f"retriever_recall@{k}": sum(recall_at(q.candidates, q.qa.evidence, k)
                                         for q, _ in rows) / len(rows),
            f"reranker_recall@{k}": sum(recall_at(s, q.qa.evidence, k)
                                        for q, s in rows) / len(rows)}
    result["by_category"] = by_cat
    return result


def write_recall(config: EvalConfig, ks: list[int] | None = None,
                 loader: BackendLoader = default_loader) -> tuple[dict[str, Any], Path]:
    """Run :func:`compare_recall` and write ``OUTPUT_DIR/recall.json``; returns both."""
    result = compare_recall(config, ks, loader)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recall.json"
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result, path


def recall_report(result: dict[str, Any]) -> list[str]:
    """The comparison as printable lines: one per k with the paired 95% interval."""
    lines = [f"{result['n']} questions with evidence in {len(result['episodes'])} "
             f"conversations, top-{result['top_k']} -> top-{result['top_m']}, checkpoint "
             f"{result['checkpoint']}"]
    for name, r in result["recall"].items():
        p = r["paired"]
        lines.append(f"{name}: retriever {r['retriever']:.4f}  reranker {r['reranker']:.4f}  "
                     f"diff {p['diff']:+.4f} [{p['diff_low']:+.4f}, {p['diff_high']:+.4f}] "
                     "(95% paired bootstrap)")
    lines.append(f"seconds: {result['seconds']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from memfactory_core.config import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__)
        return 2
    config = load_config(args[0], args[1:], EvalConfig)
    result, path = write_recall(config)
    print("\n".join(recall_report(result)))
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
