"""RMM's prospective reflection: at the end of each session, per speaker, an LLM extracts topic
summaries with the turn ids they rest on (or "NO_TRAIT"); then, for each new topic and its
most similar memories, it decides Add or Merge(number, merged summary).

Two reply formats are read, whichever the reply uses:

- **lines** (the default prompts, made for small models): one topic summary per line (up to
  the first blank line), turn ids optional (``[D1:3]``); a topic that names none rests on the
  session's turns that share the most words with it (``turn_ids_inferred`` in the trace). An
  Add/Merge reply starts with the number of the memory to merge into (as shown, from
  ``first_number``) or with NEW / no; an omitted merged summary is the stored summary and the
  new one joined.
- **JSON** (``JSON_EXTRACT_TEMPLATE`` / ``JSON_MERGE_TEMPLATE``, for larger models):
  ``{"topics": [{"summary": ..., "turn_ids": [...]}]}`` and
  ``{"action": "merge", "index": N, "summary": ...}`` or ``{"action": "add"}``.

Every reply that cannot be read (no topic sentence, a topic sharing no word with the session,
unknown turn ids only in JSON, a merge number out of range, ...) is *malformed*: it is counted,
kept in the trace with its raw text and the reason. A malformed extraction adds nothing; a
malformed merge decision falls back to ``on_malformed`` (``add`` by default, so a topic is
never lost because its decision was unreadable).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
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
from memfactory_core.rerank.features import content_words
from memfactory_core.retrieval.index import SearchMode

EXTRACT_TEMPLATE = """\
{turns}

Summarise in one short sentence what {speaker} tells about their own life in this \
conversation. If {speaker} tells nothing about their life, write NO_TRAIT."""

EXTRACT_REPLY_PREFIX = "{speaker} says that"

MERGE_TEMPLATE = """\
Stored memories:
{memories}

New memory: {topic}

Is the new memory about the same thing as one stored memory? Reply with the number of that \
memory, or with NEW if it is about something else."""

MERGE_REPLY_PREFIX = "Answer:"

JSON_EXTRACT_TEMPLATE = """\
A session of a conversation:
{turns}

List the topics this session tells about {speaker}: personal facts, preferences, plans,
events. For each topic write a one-sentence summary that names {speaker} and give the ids of
the turns it rests on. Reply with JSON only, for example:
{"topics": [{"summary": "{speaker} adopted a dog named Max in May 2023", "turn_ids": ["D1:3"]}]}
If the session tells nothing about {speaker}, reply NO_TRAIT."""

JSON_MERGE_TEMPLATE = """\
A new topic summary from a conversation:
{topic}

Memories already stored, numbered:
{memories}

If the new topic is about the same thing as one memory, merge them: reply
{"action": "merge", "index": <number of that memory>, "summary": "<one summary holding both>"}
Otherwise reply {"action": "add"}. Reply with JSON only."""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_NO_TRAIT = re.compile(r"\bno[\s_-]*traits?\b|\b(?:tells?|says?) nothing\b"
                       r"|\b(?:does not|doesn't) (?:tell|say) anything\b", re.I)
_TURN_ID = re.compile(r"[\[(]?\b([A-Za-z]*\d+:\d+)\b[\])]?")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+")
_NEW = re.compile(r"^(?:new|no|none|add|neither|different|not)\b", re.I)
_NUMBER = re.compile(r"^(?:memory\s*|number\s*|#)?\[?(\d+)\]?")
MIN_TOPIC_WORDS = 3


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
    #: the reply named no usable turn id: they were matched by shared words
    turn_ids_inferred: bool = False


def infer_turn_ids(summary: str, turn_texts: dict[str, str],
                   ignore: Iterable[str] = (), most: int = 3
                   ) -> list[str]:
    """The turns that share the most content words with ``summary`` (at least one, and at
    least half as many as the best turn), best first, at most ``most``; [] when none shares
    a word."""
    words = content_words(summary, ignore)
    scored = [(len(words & content_words(text, ignore)), tid)
              for tid, text in turn_texts.items()]
    best = max((n for n, _ in scored), default=0)
    if best == 0:
        return []
    keep = [(n, tid) for n, tid in scored if n * 2 >= best]
    keep.sort(key=lambda x: -x[0])  # stable: session order among equals
    return [tid for _, tid in keep[:most]]


def parse_topic_lines(text: str, turn_texts: dict[str, str],
                      ignore: Iterable[str] = (), skipped: list[str] | None = None
                      ) -> list[ExtractedTopic]:
    """Topics of a reply written one summary per line (up to the first blank line after a
    topic); list markers and turn ids (``[D1:3]``) are taken off the summary. A line that
    names no session turn and shares no word with one is left out (appended to ``skipped``).
    Raises MalformedReply when no line is left: none is a sentence, or none is grounded in
    the session."""
    topics: list[ExtractedTopic] = []
    ungrounded: list[str] = []
    for line in strip_think(text).strip().splitlines():
        if not line.strip():
            if topics:
                break
            continue
        ids = _TURN_ID.findall(line)
        summary = _BULLET.sub("", _TURN_ID.sub("", line)).strip(" \t-:;,")
        if len(summary.split()) < MIN_TOPIC_WORDS:
            continue
        good = [t for t in dict.fromkeys(ids) if t in turn_texts]
        bad = [t for t in dict.fromkeys(ids) if t not in turn_texts]
        inferred = not good
        if inferred:
            good = infer_turn_ids(summary, turn_texts, ignore)
            if not good:
                ungrounded.append(summary)
                continue
        topics.append(ExtractedTopic(summary, good, bad, inferred))
    if skipped is not None:
        skipped.extend(ungrounded)
    if not topics and ungrounded:
        raise MalformedReply(f"topic {ungrounded[0][:60]!r} shares no word with any turn of "
                             "this session")
    if not topics:
        raise MalformedReply(f"no topic sentence (of {MIN_TOPIC_WORDS} words or more) in the "
                             "reply")
    return topics


def parse_topics(text: str, session_turn_ids: list[str],
                 turn_texts: dict[str, str] | None = None,
                 ignore: Iterable[str] = (), skipped: list[str] | None = None
                 ) -> list[ExtractedTopic]:
    """Topics of an extraction reply; ``[]`` for a NO_TRAIT answer. A reply with a JSON
    object is read as JSON (turn ids not in the session are dropped and reported; a topic
    whose ids are all unknown is malformed); otherwise as one topic per line
    (:func:`parse_topic_lines`, ids inferred from ``turn_texts`` when a line names none;
    ``ignore``: words not to match on, such as the speakers' names; lines left out go to
    ``skipped``). Raises MalformedReply saying what is wrong."""
    stripped = strip_think(text).strip()
    if _NO_TRAIT.search(stripped) and "{" not in stripped:
        return []
    if "{" not in stripped and "```" not in stripped:
        texts = turn_texts if turn_texts is not None else {t: "" for t in session_turn_ids}
        return parse_topic_lines(stripped, texts, ignore, skipped)
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


def parse_merge_line(text: str, shown: int, first_number: int = 1) -> MergeDecision:
    """A one-line Add / Merge reply: the number of the memory to merge into (as shown,
    counting from ``first_number``), optionally followed by the merged summary; or NEW / no
    (Add). A lone yes merges when one memory was shown. Raises MalformedReply."""
    line = next((ln.strip() for ln in strip_think(text).splitlines() if ln.strip()), "")
    line = re.sub(r"^(?:answer|reply|decision)\s*[:\-]\s*", "", line, flags=re.I)
    line = re.sub(r"^merge\s*(?:with|into)?\s*", "", line, flags=re.I)
    if not line:
        raise MalformedReply("empty reply")
    number = _NUMBER.match(line)
    if number:
        index = int(number.group(1)) - first_number
        if not 0 <= index < shown:
            last = first_number + shown - 1
            raise MalformedReply(f"merge number {number.group(1)} out of range "
                                 f"({first_number}..{last})" if shown
                                 else f"merge number {number.group(1)}, but no memory was shown")
        rest = line[number.end():].strip(" \t.:;,-")
        summary = rest if len(rest.split()) >= MIN_TOPIC_WORDS else None
        return MergeDecision("merge", index, summary)
    if _NEW.match(line):
        return MergeDecision("add")
    if re.match(r"^yes\b", line, re.I):
        if shown == 1:
            return MergeDecision("merge", 0, None)
        raise MalformedReply(f"yes without the number of one of the {shown} memories shown")
    raise MalformedReply(f"neither a memory number nor NEW: {line[:60]!r}")


def parse_merge(text: str, shown: int, first_number: int = 0) -> MergeDecision:
    """An Add / Merge decision, JSON (its ``index`` counts from ``first_number``) or one line
    (:func:`parse_merge_line`); raises MalformedReply (e.g. a merge index out of range). A
    line-format merge without a summary has ``summary`` None (the caller joins both)."""
    if "{" not in strip_think(text):
        return parse_merge_line(text, shown, first_number)
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
    if not 0 <= index - first_number < shown:
        raise MalformedReply(
            f"merge index {index} out of range ({first_number}..{first_number + shown - 1})"
            if shown else f"merge index {index}, but no memory was shown")
    index -= first_number
    summary = str(data.get("summary") or "").strip()
    if not summary:
        raise MalformedReply("merge without a merged summary")
    return MergeDecision("merge", index, summary)


class ProspectiveReflectionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    extract_template: str = Field(
        EXTRACT_TEMPLATE, description="Prompt with {turns} and {speaker}; replies are read "
        "as JSON or one topic per line (see JSON_EXTRACT_TEMPLATE for JSON).")
    merge_template: str = Field(
        MERGE_TEMPLATE, description="Prompt with {topic} and {memories}; replies are read as "
        "JSON or one line (see JSON_MERGE_TEMPLATE for JSON).")
    top_k: int = Field(3, ge=0, description="Similar memories shown for each new topic.")
    search: SearchMode = Field(SearchMode.DENSE,
                               description="How similar memories are found: bm25, dense, hybrid.")
    max_topics: int = Field(5, ge=1, description="Most topics kept per speaker and session.")
    extract_max_new_tokens: int = Field(96, ge=1)
    merge_max_new_tokens: int = Field(32, ge=1)
    first_number: int = Field(
        1, ge=0, description="Number of the first memory shown to an Add/Merge decision (a "
        "merge reply names a memory by it).")
    on_malformed: Literal["add", "skip"] = Field(
        "add", description="What a malformed merge decision does with its topic.")
    extract_reply_prefix: str = Field(
        EXTRACT_REPLY_PREFIX, description="Start of the extraction reply, written for the "
        "model to continue, with {speaker} (e.g. '{\"topics\": [{\"summary\": \"' with the "
        "JSON template; empty: none); small models stay on task with it.")
    merge_reply_prefix: str = Field(
        MERGE_REPLY_PREFIX, description="Start of the Add/Merge reply (e.g. "
        "'{\"action\": \"' with the JSON template; empty: none).")

    @field_validator("extract_template")
    @classmethod
    def _check_extract(cls, v: str) -> str:
        return check_template(v, required={"turns", "speaker"}, allowed={"turns", "speaker"})

    @field_validator("merge_template")
    @classmethod
    def _check_merge(cls, v: str) -> str:
        return check_template(v, required={"topic", "memories"}, allowed={"topic", "memories"})

    @field_validator("extract_reply_prefix")
    @classmethod
    def _check_prefix(cls, v: str) -> str:
        return check_template(v, required=set(), allowed={"speaker"})


def with_prefix(prompt: Prompt, prefix: str) -> Prompt:
    """``prompt`` with the start of the reply for the model to continue (if any)."""
    return [*prompt, {"role": "assistant", "content": prefix}] if prefix else prompt


def render_numbered(entries: list[Any], first_number: int = 0) -> str:
    if not entries:
        return "(none)"
    return "\n".join(f"[{i}] {e.text}" for i, e in enumerate(entries, first_number))


def join_summaries(stored: str, new: str) -> str:
    """The merged summary when a merge reply gives none: both, stored first."""
    stored = stored.rstrip()
    return f"{stored}{'' if stored.endswith(('.', '!', '?')) else '.'} {new.strip()}"


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
            {"extractions": [], "decisions": [], "malformed": 0, "replies": 0}
            for _ in batch]
        tokens = [[0, 0] for _ in batch]
        # 1. one extraction per (rollout, speaker), all in one generate call
        jobs: list[tuple[int, str, list[Turn]]] = []
        for j, state in enumerate(batch):
            turns: list[Turn] = list(state.values.get(Port.TURNS) or [])
            for speaker in dict.fromkeys(t.speaker for t in turns):
                jobs.append((j, speaker, turns))
        prefixes = [fill(p.extract_reply_prefix, speaker=speaker) for _, speaker, _ in jobs]
        prompts: list[Prompt] = [
            with_prefix([{"role": "user", "content": fill(
                p.extract_template, turns=render_turns(turns), speaker=speaker)}], prefix)
            for (_, speaker, turns), prefix in zip(jobs, prefixes, strict=True)]
        gens = self.generate(prompts, p.extract_max_new_tokens)
        pending: list[list[tuple[str, ExtractedTopic, Turn]]] = [[] for _ in batch]
        for (j, speaker, turns), prompt, gen, prefix in zip(jobs, prompts, gens, prefixes,
                                                            strict=True):
            raw = prefix + gen.text
            record: dict[str, Any] = {"speaker": speaker, "raw": raw}
            records[j]["replies"] += 1
            names = {w for t in turns for w in content_words(t.speaker)}
            skipped: list[str] = []
            try:
                topics = parse_topics(raw, [t.id for t in turns], {t.id: t.text for t in turns},
                                      names, skipped)[: p.max_topics]
                record.update(valid=True, topics=[vars(t) for t in topics],
                              no_trait=not topics)
                if skipped:
                    record["skipped_lines"] = skipped
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
                    p.merge_template, topic=topic.summary,
                    memories=render_numbered(shown, p.first_number))}],
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
                    records[j]["replies"] += 1
                    tokens[j][0] += gen.prompt_tokens
                    tokens[j][1] += gen.completion_tokens
                    try:
                        choice = parse_merge(raw, len(shown), p.first_number)
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
                    merged = choice.summary or join_summaries(target.text, topic.summary)
                    memory.merge(target.id, topic.summary, merged, topic.turn_ids, last.time)
                    decision.update(id=target.id, merged_summary=merged,
                                    summary_joined=choice.summary is None)
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
                       "decisions": rec["replies"],
                       "topics": sum(len(e["topics"]) for e in rec["extractions"]),
                       "no_trait": sum(1 for e in rec["extractions"] if e.get("no_trait"))}))
        return results
