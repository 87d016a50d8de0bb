"""RMM's prospective reflection: at the end of each session, per speaker, an LLM extracts topic
summaries with the turn ids they rest on (JSON, or "NO_TRAIT"); then, for each new topic and
its most similar memories, it decides Add or Merge(index, merged summary).

Every reply that cannot be read (not JSON, unknown turn ids only, a merge index out of range,
...) is *malformed*: it is counted, kept in the trace with its raw text and the reason. A
malformed extraction adds nothing; a malformed merge decision falls back to ``on_malformed``
(``add`` by default, so a topic is never lost because its decision was unreadable).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory_core.components.base import (
    LLMComponent,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.components.facts import render_turns
from memfactory_core.components.templates import check_template, fill
from memfactory_core.data.episode import Turn
from memfactory_core.llm.base import Prompt
from memfactory_core.memory.base import MemoryKind
from memfactory_core.memory.topic import TopicMemory
from memfactory_core.metrics.qa import strip_think
from memfactory_core.retrieval.index import SearchMode

EXTRACT_TEMPLATE = """\
A session of a conversation:
{turns}

List the topics this session tells about {speaker}: personal facts, preferences, plans,
events. For each topic write a one-sentence summary that names {speaker} and give the ids of
the turns it rests on. Reply with JSON only, for example:
{"topics": [{"summary": "{speaker} adopted a dog named Max in May 2023", "turn_ids": ["D1:3"]}]}
If the session tells nothing about {speaker}, reply NO_TRAIT."""

MERGE_TEMPLATE = """\
A new topic summary from a conversation:
{topic}

Memories already stored, numbered:
{memories}

If the new topic is about the same thing as one memory, merge them: reply
{"action": "merge", "index": <number of that memory>, "summary": "<one summary holding both>"}
Otherwise reply {"action": "add"}. Reply with JSON only."""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_NO_TRAIT = re.compile(r"\bno[\s_-]*traits?\b", re.I)


class MalformedReply(ValueError):
    """A reflection reply that cannot be read."""


def _json_body(text: str) -> Any:
    body = strip_think(text).strip()
    fenced = _FENCE.search(body)
    if fenced:
        body = fenced.group(1).strip()
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise MalformedReply("no JSON in the reply")
    try:
        data, _ = json.JSONDecoder().raw_decode(body[min(starts):])
    except json.JSONDecodeError as err:
        raise MalformedReply(f"invalid JSON: {err.msg} (position {err.pos})") from None
    return data


@dataclass
class ExtractedTopic:
    summary: str
    turn_ids: list[str]
    dropped_turn_ids: list[str] = field(default_factory=list)


def parse_topics(text: str, session_turn_ids: list[str]) -> list[ExtractedTopic]:
    """Topics of an extraction reply; ``[]`` for a NO_TRAIT answer. Turn ids not in the
    session are dropped (and reported); a topic left with none refers to every turn of the
    session only if the reply gave none at all. Raises MalformedReply saying what is wrong."""
    stripped = strip_think(text).strip()
    if _NO_TRAIT.search(stripped) and "{" not in stripped:
        return []
    data = _json_body(text)
    items = data.get("topics") if isinstance(data, dict) else data
    if isinstance(data, dict) and items is None and "summary" in data:
        items = [data]
    if not isinstance(items, list):
        raise MalformedReply('expected {"topics": [{"summary": ..., "turn_ids": [...]}]}')
    known = set(session_turn_ids)
    topics = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedReply(f"topic {i} is not an object")
        summary = str(item.get("summary") or "").strip()
        if not summary:
            raise MalformedReply(f"topic {i} has no summary")
        raw_ids = item.get("turn_ids", item.get("turns", []))
        if isinstance(raw_ids, str):
            raw_ids = [raw_ids]
        if not isinstance(raw_ids, list):
            raise MalformedReply(f"topic {i}: turn_ids is not a list")
        ids = [str(t).strip().strip("[]") for t in raw_ids]
        good = [t for t in ids if t in known]
        bad = [t for t in ids if t not in known]
        if ids and not good:
            raise MalformedReply(f"topic {i}: none of its turn ids {ids} is in this session")
        topics.append(ExtractedTopic(summary, good, bad))
    return topics


@dataclass
class MergeDecision:
    action: Literal["add", "merge"]
    index: int | None = None
    summary: str | None = None


def parse_merge(text: str, shown: int) -> MergeDecision:
    """An Add / Merge decision; raises MalformedReply (e.g. a merge index out of range)."""
    data = _json_body(text)
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise MalformedReply("expected a JSON object")
    action = str(data.get("action", "")).strip().lower()
    if action == "add":
        return MergeDecision("add")
    if action != "merge":
        raise MalformedReply(f"unknown action {action or '(none)'!r}")
    index = data.get("index")
    if isinstance(index, str) and index.strip().isdigit():
        index = int(index.strip())
    if not isinstance(index, int) or isinstance(index, bool):
        raise MalformedReply("merge without an integer index")
    if not 0 <= index < shown:
        raise MalformedReply(f"merge index {index} out of range (0..{shown - 1})"
                             if shown else f"merge index {index}, but no memory was shown")
    summary = str(data.get("summary") or "").strip()
    if not summary:
        raise MalformedReply("merge without a merged summary")
    return MergeDecision("merge", index, summary)


class ProspectiveReflectionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extract_template: str = Field(EXTRACT_TEMPLATE,
                                  description="Prompt with {turns} and {speaker}.")
    merge_template: str = Field(MERGE_TEMPLATE,
                                description="Prompt with {topic} and {memories}.")
    top_k: int = Field(3, ge=0, description="Similar memories shown for each new topic.")
    search: SearchMode = Field(SearchMode.DENSE,
                               description="How similar memories are found: bm25, dense, hybrid.")
    max_topics: int = Field(5, ge=1, description="Most topics kept per speaker and session.")
    extract_max_new_tokens: int = Field(256, ge=1)
    merge_max_new_tokens: int = Field(128, ge=1)
    on_malformed: Literal["add", "skip"] = Field(
        "add", description="What a malformed merge decision does with its topic.")
    extract_reply_prefix: str = Field(
        "", description="Start of the extraction reply, written for the model to continue "
        "(e.g. '{\"topics\": [{\"summary\": \"'); small models produce JSON more often "
        "with it.")
    merge_reply_prefix: str = Field(
        "", description="Start of the Add/Merge reply (e.g. '{\"action\": \"').")

    @field_validator("extract_template")
    @classmethod
    def _check_extract(cls, v: str) -> str:
        return check_template(v, required={"turns", "speaker"}, allowed={"turns", "speaker"})

    @field_validator("merge_template")
    @classmethod
    def _check_merge(cls, v: str) -> str:
        return check_template(v, required={"topic", "memories"}, allowed={"topic", "memories"})


def with_prefix(prompt: Prompt, prefix: str) -> Prompt:
    """``prompt`` with the start of the reply for the model to continue (if any)."""
    return [*prompt, {"role": "assistant", "content": prefix}] if prefix else prompt


def render_numbered(entries: list[Any]) -> str:
    if not entries:
        return "(none)"
    return "\n".join(f"[{i}] {e.text}" for i, e in enumerate(entries))


@register
class ProspectiveReflection(LLMComponent):
    name = "prospective_reflection"
    stage = Stage.REFLECT
    description = ("At the end of a session, per speaker: extract topic summaries with their "
                   "turn ids, then Add each or Merge it into a similar memory (RMM).")
    Params = ProspectiveReflectionParams
    inputs = (Port.TURNS,)
    outputs = (Port.OPS,)
    memory = MemoryKind.TOPIC
    default_role = "reflector"

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        p: ProspectiveReflectionParams = self.params  # type: ignore[assignment]
        records: list[dict[str, Any]] = [
            {"extractions": [], "decisions": [], "malformed": 0} for _ in batch]
        tokens = [[0, 0] for _ in batch]
        # 1. one extraction per (rollout, speaker), all in one generate call
        jobs: list[tuple[int, str, list[Turn]]] = []
        for j, state in enumerate(batch):
            turns: list[Turn] = list(state.values.get(Port.TURNS) or [])
            for speaker in dict.fromkeys(t.speaker for t in turns):
                jobs.append((j, speaker, turns))
        prompts: list[Prompt] = [
            with_prefix([{"role": "user", "content": fill(
                p.extract_template, turns=render_turns(turns), speaker=speaker)}],
                p.extract_reply_prefix)
            for _, speaker, turns in jobs]
        gens = self.generate(prompts, p.extract_max_new_tokens)
        pending: list[list[tuple[str, ExtractedTopic, Turn]]] = [[] for _ in batch]
        for (j, speaker, turns), prompt, gen in zip(jobs, prompts, gens, strict=True):
            raw = p.extract_reply_prefix + gen.text
            record: dict[str, Any] = {"speaker": speaker, "raw": raw}
            try:
                topics = parse_topics(raw, [t.id for t in turns])[: p.max_topics]
                record.update(valid=True, topics=[vars(t) for t in topics],
                              no_trait=not topics)
                pending[j].extend((speaker, t, turns[-1]) for t in topics)
            except MalformedReply as err:
                record.update(valid=False, topics=[], error=str(err))
                records[j]["malformed"] += 1
            records[j]["extractions"].append(record)
            tokens[j][0] += gen.prompt_tokens
            tokens[j][1] += gen.completion_tokens
            self.record_turn(batch[j], prompt, gen, step="extract", speaker=speaker,
                             valid=record["valid"])
        # 2. topic i of every rollout decided in one call; later topics see earlier edits
        for i in range(max((len(x) for x in pending), default=0)):
            active = [j for j, x in enumerate(pending) if i < len(x)]
            prompts, shown_all = [], []
            for j in active:
                memory = batch[j].memory
                assert isinstance(memory, TopicMemory)
                _, topic, _ = pending[j][i]
                shown = ([e for e, _ in memory.search(topic.summary, p.top_k, p.search)]
                         if p.top_k and len(memory) else [])
                shown_all.append(shown)
                prompts.append(with_prefix([{"role": "user", "content": fill(
                    p.merge_template, topic=topic.summary, memories=render_numbered(shown))}],
                    p.merge_reply_prefix))
            gens = self.generate(prompts, p.merge_max_new_tokens) if any(shown_all) else []
            for n, (j, shown) in enumerate(zip(active, shown_all, strict=True)):
                state = batch[j]
                memory = state.memory
                assert isinstance(memory, TopicMemory)
                speaker, topic, last = pending[j][i]
                decision: dict[str, Any] = {"speaker": speaker, "topic": topic.summary,
                                            "turn_ids": topic.turn_ids,
                                            "shown": [e.id for e in shown]}
                if not shown:
                    # nothing to merge with: Add without asking
                    decision.update(action="add", valid=True, raw=None)
                    choice = MergeDecision("add")
                else:
                    gen = gens[n]
                    raw = p.merge_reply_prefix + gen.text
                    decision["raw"] = raw
                    tokens[j][0] += gen.prompt_tokens
                    tokens[j][1] += gen.completion_tokens
                    try:
                        choice = parse_merge(raw, len(shown))
                        decision.update(action=choice.action, valid=True)
                    except MalformedReply as err:
                        records[j]["malformed"] += 1
                        decision.update(valid=False, error=str(err), action=p.on_malformed)
                        choice = MergeDecision("add") if p.on_malformed == "add" else None
                    self.record_turn(state, prompts[n], gen, step="merge",
                                     valid=decision["valid"], action=decision["action"])
                if choice is not None and choice.action == "add":
                    entry = memory.add_topic(topic.summary, speaker, topic.turn_ids, last.time)
                    decision["id"] = entry.id
                elif choice is not None:
                    target = shown[choice.index or 0]
                    memory.merge(target.id, topic.summary, choice.summary or topic.summary,
                                 topic.turn_ids, last.time)
                    decision.update(id=target.id, merged_summary=choice.summary)
                records[j]["decisions"].append(decision)
        results = []
        for state, rec, (pt, ct) in zip(batch, records, tokens, strict=True):
            ops = [{"op": d["action"].upper(), "id": d.get("id"), "topic": d["topic"]}
                   for d in rec["decisions"] if d.get("id")]
            state.values[Port.OPS] = ops
            counts = {"ADD": sum(o["op"] == "ADD" for o in ops),
                      "MERGE": sum(o["op"] == "MERGE" for o in ops)}
            results.append(StepResult(
                output=rec, prompt_tokens=pt, completion_tokens=ct,
                extra={"ops": counts, "malformed": rec["malformed"],
                       "topics": sum(len(e["topics"]) for e in rec["extractions"]),
                       "no_trait": sum(1 for e in rec["extractions"] if e.get("no_trait"))}))
        return results
