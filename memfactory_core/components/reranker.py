"""RMM's reranker as a pipeline slot: after any retriever (bank or topic memory), it scores the
retrieved top-K with a small torch module and keeps the top M.

The step records the retriever's candidates and the reranked selection, so Recall@k of the
retriever alone and with the reranker can both be read from one trace.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.components.base import (
    Component,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.errors import MemFactoryError
from memfactory_core.rerank.features import overlap_tensor
from memfactory_core.rerank.module import RerankerModule, load_reranker, select_top_m
from memfactory_core.retrieval.embedders import CachedEmbedder, Embedder, cached_embedder


class RerankerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    top_m: int = Field(5, ge=1, description="Memories kept of the retriever's top-K (paper: 5).")
    temperature: float = Field(0.5, gt=0.0, description="Softmax temperature of the scores.")
    sample: bool = Field(False, description="Add Gumbel noise (sample a subset) instead of "
                                            "keeping the M best scores.")
    checkpoint: str | None = Field(
        None, description="Trained reranker (safetensors file or checkpoint folder); "
        "none: an untrained one, which ranks as dense retrieval does.")
    embedder: str | None = Field(
        None, description="Embedding model (minilm, hashing-<dim>); none: the memory's own.")
    seed: int | None = Field(None, description="Seed of the Gumbel noise (none: random).")


def candidate_tensors(embed: Embedder, questions: list[str],
                      candidates: list[list[dict[str, Any]]]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query ``(B, d)``, padded candidate ``(B, K, d)`` embeddings and the mask ``(B, K)``."""
    dim = embed.dim
    k = max((len(c) for c in candidates), default=0)
    q = torch.from_numpy(embed.embed(questions))
    m = torch.zeros(len(questions), max(k, 1), dim)
    mask = torch.zeros(len(questions), max(k, 1), dtype=torch.bool)
    for i, cands in enumerate(candidates):
        if cands:
            m[i, : len(cands)] = torch.from_numpy(embed.embed([c["text"] for c in cands]))
            mask[i, : len(cands)] = True
    return q, m, mask


@register
class Reranker(Component):
    name = "reranker"
    stage = Stage.RERANK
    description = ("Rerank the retrieved memories with a trainable torch module (residual "
                   "linear adaptation, Gumbel top-M; RMM's retrospective reflection).")
    Params = RerankerParams
    inputs = (Port.QUESTION, Port.RETRIEVED)
    outputs = (Port.RETRIEVED,)

    _module: RerankerModule | None = None
    _embed: CachedEmbedder | None = None

    def _embedder(self, state: RolloutState) -> Embedder:
        p: RerankerParams = self.params  # type: ignore[assignment]
        if p.embedder:
            return self.context.resources.embedder(p.embedder)
        index = getattr(state.memory, "index", None)
        embedder = getattr(index, "embedder", None)
        if embedder is None:
            raise MemFactoryError(
                "reranker: the memory has no embedding model (embedder: none); give the "
                "reranker an embedder parameter (minilm, hashing-<dim>)")
        return embedder

    def setup(self, embedder: Embedder) -> RerankerModule:
        """The module (loaded once) and the embedding cache for ``embedder``."""
        p: RerankerParams = self.params  # type: ignore[assignment]
        if self._module is None:
            if p.checkpoint:
                self._module = load_reranker(p.checkpoint, dim=embedder.dim,
                                             embedder=embedder.model_name)
            else:
                self._module = RerankerModule(embedder.dim, embedder.model_name)
            self._module.eval()
            self._embed = cached_embedder(embedder)
        elif self._module.dim != embedder.dim:
            raise MemFactoryError(f"reranker: {self._module.dim}-dimensional module, but the "
                                  f"memory embeds with {embedder.dim} dimensions")
        return self._module

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        p: RerankerParams = self.params  # type: ignore[assignment]
        if not batch:
            return []
        module = self.setup(self._embedder(batch[0]))
        assert self._embed is not None
        questions = [s.values[Port.QUESTION] for s in batch]
        candidates = [list(s.values.get(Port.RETRIEVED) or []) for s in batch]
        q, m, mask = candidate_tensors(self._embed, questions, candidates)
        overlap = overlap_tensor(questions, candidates, m.shape[1]) if module.lexical else None
        gen = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
        with torch.no_grad():
            scores = module.scores(q, m, overlap)
            sel = select_top_m(scores, p.top_m, p.temperature, mask, p.sample, gen)
        results = []
        for i, (state, cands) in enumerate(zip(batch, candidates, strict=True)):
            chosen = [int(j) for j in sel.indices[i] if j >= 0]
            picked = [{**cands[j], "retriever_rank": j,
                       "rerank_score": round(float(scores[i, j]), 6)} for j in chosen]
            state.values[Port.RETRIEVED] = picked
            results.append(StepResult(
                output=[e["id"] for e in picked],
                extra={"retrieved": picked,
                       "candidates": [{"id": c["id"], "turn_ids": c.get("turn_ids", [])}
                                      for c in cands],
                       "top_m": p.top_m, "sampled": p.sample},
            ))
        return results
