"""Retrieval of bank entries for a question: BM25, dense, or hybrid (RRF), optionally top-k
per speaker."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.components.base import (
    Component,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.memory.bank import MemoryBank
from memfactory_core.memory.base import MemoryKind
from memfactory_core.retrieval.index import SearchMode


class RetrieverParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: SearchMode = Field(SearchMode.HYBRID, description="bm25, dense or hybrid (RRF).")
    top_k: int = Field(10, ge=1, description="Entries retrieved (per speaker if per_speaker).")
    per_speaker: bool = Field(
        False, description="Retrieve top_k entries about each speaker, then merge by score."
    )


@register
class Retriever(Component):
    name = "retriever"
    stage = Stage.RETRIEVE
    description = "Retrieve the bank entries that best match the question."
    Params = RetrieverParams
    inputs = (Port.QUESTION,)
    outputs = (Port.RETRIEVED,)
    memory = MemoryKind.BANK

    def retrieve(self, bank: MemoryBank, question: str) -> list[dict[str, Any]]:
        p: RetrieverParams = self.params  # type: ignore[assignment]
        if not len(bank):
            return []
        if p.per_speaker:
            speakers = sorted({e.speaker for e in bank.active() if e.speaker is not None})
            hits = [h for s in speakers for h in bank.search(question, p.top_k, p.mode, [s])]
            hits.sort(key=lambda h: -h[1])
        else:
            hits = bank.search(question, p.top_k, p.mode)
        return [{**e.brief(), "score": round(score, 6)} for e, score in hits]

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        results = []
        for state in batch:
            bank = state.memory
            assert isinstance(bank, MemoryBank)
            found = self.retrieve(bank, state.values[Port.QUESTION])
            state.values[Port.RETRIEVED] = found
            results.append(StepResult(
                output=[e["id"] for e in found],
                extra={"retrieved": found, "bank_size": len(bank)},
            ))
        return results
