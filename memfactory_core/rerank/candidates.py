"""What reranker training and evaluation share: each episode's memory built once by the
pipeline's ingest lane, the retriever's top-K for each question, and the rewards of a
selection (evidence overlap, citations)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memfactory_core.components.base import Component, ComponentContext, Stage
from memfactory_core.components.retriever import Retriever
from memfactory_core.data.episode import QA, Episode
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import SamplingParams
from memfactory_core.memory.base import Memory
from memfactory_core.pipeline.runtime import PipelineRuntime
from memfactory_core.pipeline.spec import ResolvedPipeline, ResolvedSlot
from memfactory_core.retrieval.embedders import CachedEmbedder, cached_embedder


@dataclass
class Query:
    """A question of an episode with the retriever's candidates (best first)."""

    episode: Episode
    qa: QA
    memory: Memory
    candidates: list[dict[str, Any]]


def query_slots(pipeline: ResolvedPipeline) -> tuple[ResolvedSlot, ResolvedSlot,
                                                      ResolvedSlot | None]:
    """The retriever, reranker and (optional) answering slots of a pipeline's query lane."""
    retriever = next((s for s in pipeline.query if issubclass(s.cls, Retriever)), None)
    reranker = next((s for s in pipeline.query if s.cls.stage == Stage.RERANK), None)
    if retriever is None or reranker is None:
        raise MemFactoryError(
            f"pipeline {pipeline.spec.name!r} needs a retriever followed by a reranker in its "
            "query lane to train or evaluate a reranker")
    answer = next((s for s in pipeline.query if s.cls.stage == Stage.ANSWER), None)
    return retriever, reranker, answer


def build_memories(runtime: PipelineRuntime, episodes: Sequence[Episode],
                   sampling: SamplingParams | None = None) -> dict[str, Memory]:
    """Each episode's memory after the ingest lane (the query lane is not run)."""
    ingest_only = ResolvedPipeline(spec=runtime.pipeline.spec,
                                   memory_params=runtime.pipeline.memory_params,
                                   ingest=runtime.pipeline.ingest, query=[])
    inner = PipelineRuntime(ingest_only, runtime.llms, sampling=sampling,
                            tokenizer=runtime.tokenizer, resources=runtime.resources)
    placeholder = QA(id="ingest", question="", answers=[])
    stubs = [ep.model_copy(update={"questions": [placeholder]}) for ep in episodes]
    results = inner.run(stubs)
    memories = {}
    for ep, res in zip(episodes, results, strict=True):
        assert res.memory is not None
        memories[ep.id] = res.memory
    return memories


def share_embeddings(memories: dict[str, Memory], questions: Sequence[str]
                     ) -> CachedEmbedder | None:
    """Give every memory's index one caching embedder (before its texts are embedded) and
    embed ``questions`` in one batch; None when the memories have no embedder."""
    indexes = [getattr(m, "index", None) for m in memories.values()]
    inner = next((i.embedder for i in indexes if i is not None and i.embedder is not None),
                 None)
    if inner is None:
        return None
    cached = cached_embedder(inner)
    for index in indexes:
        if index is not None and index.embedder is not None:
            index.embedder = cached
    cached.embed(list(questions))
    return cached


def make_component(slot: ResolvedSlot, runtime: PipelineRuntime,
                   sampling: SamplingParams) -> Component:
    """A fresh component for ``slot`` bound to the runtime's model for its role."""
    llm = runtime.llms.get(slot.role) if slot.role else None
    ctx = ComponentContext(llm=llm, tokenizer=runtime.tokenizer, sampling=sampling,
                           resources=runtime.resources)
    return slot.cls(slot.params, ctx, slot.role)


def retrieve_queries(retriever: Retriever, episodes: Sequence[Episode],
                     memories: dict[str, Memory], need_evidence: bool = False) -> list[Query]:
    """The retriever's candidates for every question (those without evidence ids left out
    when ``need_evidence``)."""
    out = []
    for ep in episodes:
        memory = memories[ep.id]
        for qa in ep.questions:
            if need_evidence and not qa.evidence:
                continue
            cands = retriever.retrieve(memory, qa.question)  # type: ignore[arg-type]
            out.append(Query(ep, qa, memory, cands))
    return out


def evidence_hits(entries: Sequence[dict[str, Any]], evidence: Sequence[str]) -> list[bool]:
    """For each entry: whether its source turns include one of the evidence turn ids."""
    wanted = set(evidence)
    return [bool(wanted.intersection(e.get("turn_ids") or ())) for e in entries]


def recall_at(entries: Sequence[dict[str, Any]], evidence: Sequence[str], k: int) -> float:
    """Share of the evidence turn ids among the source turns of the first ``k`` entries."""
    wanted = set(evidence)
    if not wanted:
        raise MemFactoryError("recall needs evidence turn ids")
    found = {t for e in entries[:k] for t in (e.get("turn_ids") or ())}
    return len(wanted & found) / len(wanted)
