"""The RAG baseline's writer: every fact is added to the bank, nothing is ever edited."""

from __future__ import annotations

from memfactory_core.components.base import (
    Component,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.memory.bank import Fact, MemoryBank
from memfactory_core.memory.base import MemoryKind


@register
class AddAllWriter(Component):
    name = "add_all"
    stage = Stage.WRITE
    description = "Add every fact to the memory bank as a new entry (plain RAG, no manager)."
    inputs = (Port.FACTS,)
    outputs = (Port.OPS,)
    memory = MemoryKind.BANK

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        results = []
        for state in batch:
            bank = state.memory
            assert isinstance(bank, MemoryBank)
            facts: list[Fact] = state.values.get(Port.FACTS, [])
            ops = []
            for fact in facts:
                entry = bank.add(fact.text, fact.speaker, fact.turn_ids, fact.time)
                ops.append({"op": "ADD", "id": entry.id, "text": entry.text})
            state.values[Port.OPS] = ops
            results.append(StepResult(output=ops, extra={"ops": {"ADD": len(ops)}}))
        return results
