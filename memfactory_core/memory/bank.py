"""Memory bank: entries with stable ids, conversation-time stamps, validity and history.

UPDATE keeps an entry's id and records its old text in the history; DELETE closes the
entry's validity interval (the entry stays, marked closed); NOOP changes nothing. Searches
see only open entries. The bank records the embedding model and dimension of its index and
refuses vectors of another dimension, or a snapshot made with another model.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.errors import MemFactoryError
from memfactory_core.memory.base import Memory, MemoryBuildContext, MemoryKind, register_memory
from memfactory_core.retrieval.embedders import Embedder
from memfactory_core.retrieval.index import SearchIndex, SearchMode


class Fact(BaseModel):
    """A statement extracted from turns: what the ingest lane hands to a bank writer."""

    text: str
    speaker: str | None = None
    turn_ids: list[str] = Field(default_factory=list)
    time: str | None = None


class OpKind(StrEnum):
    ADD = "ADD"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    NOOP = "NOOP"


class BankOp(BaseModel):
    """One edit of a bank. ``id`` names an existing entry (UPDATE, DELETE, optional NOOP)."""

    model_config = ConfigDict(extra="forbid")

    op: OpKind
    id: str | None = None
    text: str | None = None


class EntryVersion(BaseModel):
    """An earlier text of an entry, kept when it was updated."""

    text: str
    until: str | None = None
    turn_ids: list[str] = Field(default_factory=list)


class BankEntry(BaseModel):
    id: str
    text: str
    speaker: str | None = None
    turn_ids: list[str] = Field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    valid_from: str | None = None
    valid_to: str | None = None
    closed: bool = False
    history: list[EntryVersion] = Field(default_factory=list)

    def brief(self) -> dict[str, Any]:
        """What prompts and retrieval results show of an entry."""
        return {"id": self.id, "text": self.text, "speaker": self.speaker,
                "time": self.updated_at or self.created_at, "turn_ids": self.turn_ids}


class BankParams(BaseModel):
    """Parameters of a memory bank."""

    model_config = ConfigDict(extra="forbid")

    embedder: str = Field(
        "minilm",
        description="Embedding model of the dense index: minilm (all-MiniLM-L6-v2, 384-d), "
        "hashing-<dim> (deterministic, lexical), or none (BM25 only).",
    )


class MemoryBank(Memory):
    """A bank of memory entries with an incremental BM25 / dense index."""

    kind = MemoryKind.BANK

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.entries: dict[str, BankEntry] = {}
        self.index = SearchIndex(embedder)
        self._next = 1
        self._log: list[tuple[str, str, str | None, str]] = []  # (op, id, old text, new text)

    # -- identity of the embedding ------------------------------------------------------

    @property
    def embedding(self) -> dict[str, Any]:
        emb = self.index.embedder
        return {"model": emb.model_name if emb else None, "dim": emb.dim if emb else None}

    def set_vectors(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Give entries precomputed vectors; refused unless their dimension is the bank's."""
        self.index.set_vectors(list(ids), vectors)

    # -- reading -----------------------------------------------------------------------

    def get(self, entry_id: str) -> BankEntry:
        entry = self.entries.get(entry_id)
        if entry is None:
            raise MemFactoryError(f"no memory entry {entry_id!r} in the bank")
        return entry

    def active(self) -> list[BankEntry]:
        """Open entries, oldest first."""
        return [e for e in self.entries.values() if not e.closed]

    def __len__(self) -> int:
        return len(self.index)

    def search(self, query: str, k: int, mode: SearchMode | str = SearchMode.HYBRID,
               speakers: Sequence[str] | None = None) -> list[tuple[BankEntry, float]]:
        """The ``k`` open entries best matching ``query``, with their scores."""
        if mode != SearchMode.BM25 and self.index.embedder is None:
            mode = SearchMode.BM25
        hits = self.index.search(query, k, mode, groups=speakers)
        return [(self.entries[h.key], h.score) for h in hits]

    # -- edits -------------------------------------------------------------------------

    def add(self, text: str, speaker: str | None = None, turn_ids: Sequence[str] = (),
            time: str | None = None) -> BankEntry:
        entry_id = f"m{self._next}"
        self._next += 1
        entry = BankEntry(id=entry_id, text=text, speaker=speaker, turn_ids=list(turn_ids),
                          created_at=time, updated_at=time, valid_from=time)
        self.entries[entry_id] = entry
        self.index.upsert(entry_id, text, group=speaker)
        self._log.append(("add", entry_id, None, text))
        return entry

    def _open(self, entry_id: str | None, op: str) -> BankEntry:
        if entry_id is None:
            raise MemFactoryError(f"{op} needs the id of an entry")
        entry = self.get(entry_id)
        if entry.closed:
            raise MemFactoryError(f"{op} of entry {entry_id!r}, which was deleted")
        return entry

    def update(self, entry_id: str, text: str, turn_ids: Sequence[str] = (),
               time: str | None = None) -> BankEntry:
        """Replace an open entry's text; its old text goes to the history, the id stays."""
        entry = self._open(entry_id, "UPDATE")
        old = entry.text
        entry.history.append(EntryVersion(text=old, until=time, turn_ids=list(entry.turn_ids)))
        entry.text = text
        entry.turn_ids = list(dict.fromkeys([*entry.turn_ids, *turn_ids]))
        entry.updated_at = time
        self.index.upsert(entry_id, text, group=entry.speaker)
        self._log.append(("update", entry_id, old, text))
        return entry

    def delete(self, entry_id: str, time: str | None = None) -> BankEntry:
        """Close an open entry's validity; it stays in the bank, out of every search."""
        entry = self._open(entry_id, "DELETE")
        entry.closed = True
        entry.valid_to = time
        self.index.remove(entry_id)
        self._log.append(("delete", entry_id, entry.text, entry.text))
        return entry

    def check_ops(self, ops: Sequence[BankOp]) -> list[str]:
        """Why ``ops`` cannot be applied (empty when they all can)."""
        problems = []
        touched: set[str] = set()
        for i, op in enumerate(ops):
            if op.op in (OpKind.UPDATE, OpKind.DELETE):
                if not op.id:
                    problems.append(f"op {i} ({op.op}): no id")
                elif op.id not in self.entries:
                    problems.append(f"op {i} ({op.op}): unknown id {op.id!r}")
                elif self.entries[op.id].closed:
                    problems.append(f"op {i} ({op.op}): entry {op.id!r} was deleted")
                elif op.id in touched:
                    problems.append(f"op {i} ({op.op}): entry {op.id!r} edited twice")
                else:
                    touched.add(op.id)
            elif op.op == OpKind.NOOP and op.id and op.id not in self.entries:
                problems.append(f"op {i} (NOOP): unknown id {op.id!r}")
            if op.op in (OpKind.ADD, OpKind.UPDATE) and not (op.text or "").strip():
                problems.append(f"op {i} ({op.op}): no text")
        return problems

    def apply(self, ops: Sequence[BankOp], speaker: str | None = None,
              turn_ids: Sequence[str] = (), time: str | None = None) -> list[dict[str, Any]]:
        """Apply ``ops`` all or nothing (checked first); returns what each op did."""
        problems = self.check_ops(ops)
        if problems:
            raise MemFactoryError("; ".join(problems))
        done = []
        for op in ops:
            if op.op == OpKind.ADD:
                entry = self.add(op.text or "", speaker, turn_ids, time)
                done.append({"op": "ADD", "id": entry.id, "text": entry.text})
            elif op.op == OpKind.UPDATE:
                old = self.get(op.id or "").text
                entry = self.update(op.id or "", op.text or "", turn_ids, time)
                done.append({"op": "UPDATE", "id": entry.id, "before": old, "after": entry.text})
            elif op.op == OpKind.DELETE:
                entry = self.delete(op.id or "", time)
                done.append({"op": "DELETE", "id": entry.id, "text": entry.text})
            else:
                done.append({"op": "NOOP", "id": op.id})
        return done

    # -- Memory interface --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"embedding": self.embedding,
                "entries": [e.model_dump(mode="json") for e in self.entries.values()]}

    def clone(self) -> MemoryBank:
        other = MemoryBank.__new__(MemoryBank)
        other.entries = {k: e.model_copy(deep=True) for k, e in self.entries.items()}
        other.index = self.index.clone()
        other._next = self._next
        other._log = list(self._log)
        return other

    def mark(self) -> int:
        return len(self._log)

    def diff(self, since: Any) -> dict[str, list[Any]] | None:
        changes = self._log[int(since):]
        if not changes:
            return None
        out: dict[str, list[Any]] = {"added": [], "updated": [], "deleted": []}
        for op, entry_id, old, new in changes:
            entry = self.entries[entry_id]
            if op == "add":
                out["added"].append({"id": entry_id, "text": new,
                                     "speaker": entry.speaker, "turn_ids": entry.turn_ids})
            elif op == "update":
                out["updated"].append({"id": entry_id, "before": old, "after": new})
            else:
                out["deleted"].append({"id": entry_id, "text": old})
        return out

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], embedder: Embedder | None) -> MemoryBank:
        """Rebuild a bank from ``snapshot()``; refuses one made with another embedding."""
        recorded = snapshot.get("embedding") or {}
        bank = cls(embedder)
        if recorded.get("model") != bank.embedding["model"] or (
            recorded.get("dim") != bank.embedding["dim"]
        ):
            raise MemFactoryError(
                f"bank snapshot was embedded with {recorded.get('model')} "
                f"({recorded.get('dim')} dimensions), this bank uses "
                f"{bank.embedding['model']} ({bank.embedding['dim']} dimensions)"
            )
        for raw in snapshot.get("entries", []):
            entry = BankEntry.model_validate(raw)
            bank.entries[entry.id] = entry
            if not entry.closed:
                bank.index.upsert(entry.id, entry.text, group=entry.speaker)
            number = entry.id[1:]
            if number.isdigit():
                bank._next = max(bank._next, int(number) + 1)
        return bank


def _create(params: BankParams, ctx: MemoryBuildContext) -> MemoryBank:
    embedder = None if params.embedder == "none" else ctx.resources.embedder(params.embedder)
    return MemoryBank(embedder)


register_memory(MemoryKind.BANK, BankParams, _create,
                "Entries with ids, timestamps, validity and history, searchable by BM25 and "
                "dense retrieval (Memory-R1).")

