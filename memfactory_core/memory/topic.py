"""Topic memory (RMM): entries are topic summaries with references to the raw turns they rest
on. The summary is the retrieval key. A merge rewrites a topic's summary with a newer topic
folded in: the old summary goes to the entry's history (as a bank update does) and the topic
that was merged in is kept in ``merged``, so every merge can be traced back.

A topic memory is a :class:`MemoryBank` (same index, search, snapshots and refusal of other
embeddings) whose entries also record what was merged into them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.memory.bank import BankEntry, BankParams, MemoryBank
from memfactory_core.memory.base import MemoryBuildContext, MemoryKind, register_memory
from memfactory_core.retrieval.embedders import Embedder


class MergedTopic(BaseModel):
    """A topic folded into an existing entry by a merge."""

    summary: str
    turn_ids: list[str] = Field(default_factory=list)
    time: str | None = None
    before: str
    after: str


class TopicEntry(BankEntry):
    """A topic summary (``text``), the raw turns it rests on (``turn_ids``) and its merges."""

    merged: list[MergedTopic] = Field(default_factory=list)

    @property
    def summary(self) -> str:
        return self.text


class TopicParams(BankParams):
    """Parameters of a topic memory (those of a bank)."""

    model_config = ConfigDict(extra="forbid")


class TopicMemory(MemoryBank):
    """Topic summaries with their source turns; Add and Merge keep every earlier summary."""

    kind = MemoryKind.TOPIC

    def __init__(self, embedder: Embedder | None = None) -> None:
        super().__init__(embedder)
        self._merges: list[tuple[str, int]] = []  # (entry id, index in entry.merged)

    def add(self, text: str, speaker: str | None = None, turn_ids: Sequence[str] = (),
            time: str | None = None) -> TopicEntry:
        entry = super().add(text, speaker, turn_ids, time)
        topic = TopicEntry(**entry.model_dump())
        self.entries[entry.id] = topic
        return topic

    def add_topic(self, summary: str, speaker: str | None = None,
                  turn_ids: Sequence[str] = (), time: str | None = None) -> TopicEntry:
        """A new topic entry."""
        return self.add(summary, speaker, turn_ids, time)

    def merge(self, entry_id: str, summary: str, merged_summary: str,
              turn_ids: Sequence[str] = (), time: str | None = None) -> TopicEntry:
        """Fold the new topic ``summary`` into entry ``entry_id``, whose summary becomes
        ``merged_summary``; its turn references gain ``turn_ids``."""
        entry = self._open(entry_id, "MERGE")
        before = entry.text
        self.update(entry_id, merged_summary, turn_ids, time)
        assert isinstance(entry, TopicEntry)
        entry.merged.append(MergedTopic(summary=summary, turn_ids=list(turn_ids), time=time,
                                        before=before, after=merged_summary))
        self._merges.append((entry_id, len(entry.merged) - 1))
        return entry

    def topics(self) -> list[TopicEntry]:
        """Open topics, oldest first."""
        return [e for e in self.active() if isinstance(e, TopicEntry)]

    # -- Memory interface --------------------------------------------------------------

    def clone(self) -> TopicMemory:
        other = TopicMemory.__new__(TopicMemory)
        other.entries = {k: e.model_copy(deep=True) for k, e in self.entries.items()}
        other.index = self.index.clone()
        other._next = self._next
        other._log = list(self._log)
        other._merges = list(self._merges)
        return other

    def mark(self) -> tuple[int, int]:  # type: ignore[override]
        return (len(self._log), len(self._merges))

    def diff(self, since: Any) -> dict[str, list[Any]] | None:
        log_mark, merge_mark = since if isinstance(since, list | tuple) else (since, 0)
        out = super().diff(log_mark)
        merges = self._merges[int(merge_mark):]
        if out is None and not merges:
            return None
        out = out or {"added": [], "updated": [], "deleted": []}
        out["merged"] = []
        for entry_id, i in merges:
            entry = self.entries[entry_id]
            assert isinstance(entry, TopicEntry)
            out["merged"].append({"id": entry_id, **entry.merged[i].model_dump()})
        return out

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], embedder: Embedder | None) -> TopicMemory:
        """Rebuild a topic memory from ``snapshot()``; refuses another embedding."""
        base = MemoryBank.from_snapshot(snapshot, embedder)
        memory = cls.__new__(cls)
        memory.__dict__.update(base.__dict__)
        memory._merges = []
        memory.entries = {e["id"]: TopicEntry.model_validate(e)
                          for e in snapshot.get("entries", [])}
        return memory


def _create(params: TopicParams, ctx: MemoryBuildContext) -> TopicMemory:
    embedder = None if params.embedder == "none" else ctx.resources.embedder(params.embedder)
    return TopicMemory(embedder)


register_memory(MemoryKind.TOPIC, TopicParams, _create,
                "Topic summaries with references to their source turns; merges keep what was "
                "merged (RMM).")
