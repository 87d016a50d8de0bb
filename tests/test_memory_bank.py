"""The memory bank: versioned updates, closed deletes, diffs, clones, embedding identity."""

from __future__ import annotations

import numpy as np
import pytest

from memfactory_core.errors import MemFactoryError
from memfactory_core.memory import BankOp, MemoryBank, memory_types
from memfactory_core.memory.bank import BankParams
from memfactory_core.retrieval import HashingEmbedder


def bank() -> MemoryBank:
    b = MemoryBank(HashingEmbedder(32))
    b.add("Ann lives in Oslo", "Ann", ["D1:1"], "1 May 2023")
    b.add("Bo has a cat", "Bo", ["D1:2"], "1 May 2023")
    return b


def test_update_keeps_id_and_history_delete_closes_noop_changes_nothing() -> None:
    b = bank()
    mark = b.mark()
    done = b.apply([BankOp(op="UPDATE", id="m1", text="Ann lives in Bergen"),
                    BankOp(op="DELETE", id="m2"), BankOp(op="NOOP")],
                   turn_ids=["D2:1"], time="9 June 2023")
    assert [d["op"] for d in done] == ["UPDATE", "DELETE", "NOOP"]
    ann = b.get("m1")
    assert ann.text == "Ann lives in Bergen" and ann.updated_at == "9 June 2023"
    assert ann.history[0].text == "Ann lives in Oslo" and ann.turn_ids == ["D1:1", "D2:1"]
    bo = b.get("m2")
    assert bo.closed and bo.valid_to == "9 June 2023" and bo.text == "Bo has a cat"
    assert [e.id for e in b.active()] == ["m1"]
    assert [e.id for e, _ in b.search("cat", 5, "bm25")] == []
    assert b.diff(mark) == {
        "added": [],
        "updated": [{"id": "m1", "before": "Ann lives in Oslo", "after": "Ann lives in Bergen"}],
        "deleted": [{"id": "m2", "text": "Bo has a cat"}],
    }
    assert b.diff(b.mark()) is None


def test_invalid_ops_change_nothing() -> None:
    b = bank()
    before = b.snapshot()
    for ops in ([BankOp(op="ADD", text="new"), BankOp(op="UPDATE", id="m9", text="x")],
                [BankOp(op="DELETE", id="m1"), BankOp(op="DELETE", id="m1")],
                [BankOp(op="ADD", text="  ")]):
        assert b.check_ops(ops)
        with pytest.raises(MemFactoryError):
            b.apply(ops)
    assert b.snapshot() == before


def test_clone_is_independent_and_snapshot_round_trips() -> None:
    b = bank()
    c = b.clone()
    c.update("m1", "Ann lives in Rome")
    c.add("Cy likes tea")
    assert b.get("m1").text == "Ann lives in Oslo" and len(b) == 2 and len(c) == 3
    assert [e.id for e, _ in b.search("Rome", 3, "bm25")] == []
    again = MemoryBank.from_snapshot(c.snapshot(), HashingEmbedder(32))
    assert again.snapshot() == c.snapshot()
    assert again.add("x").id == "m4"


def test_bank_records_its_embedding_and_refuses_another() -> None:
    b = bank()
    assert b.snapshot()["embedding"] == {"model": "hashing-32", "dim": 32}
    with pytest.raises(MemFactoryError, match=r"dimension 384 refused.*32 dimensions"):
        b.set_vectors(["m1"], np.zeros((1, 384), dtype=np.float32))
    with pytest.raises(MemFactoryError, match="embedded with hashing-32"):
        MemoryBank.from_snapshot(b.snapshot(), HashingEmbedder(64))


def test_memory_registry_and_params_forbid_unknown_keys() -> None:
    types = memory_types()
    assert {"text", "bank"} <= set(types)
    with pytest.raises(ValueError):
        BankParams.model_validate({"embedder": "minilm", "embeder": "x"})
    with pytest.raises(ValueError):
        types["text"].Params.model_validate({"max_tokns": 5})
