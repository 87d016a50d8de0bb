"""Memory-R1's memory manager: for each new fact, an LLM sees the most similar entries of the
bank and replies with ADD / UPDATE / DELETE / NOOP operations in a mem0-style JSON.

A reply that is not valid JSON, names an unknown operation or an unknown (or deleted) entry is
*malformed*: it is counted, kept in the trace with its raw text and the reason, and the bank is
left exactly as it was for that fact.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memfactory_core.components.base import (
    LLMComponent,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.components.templates import check_template, fill
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import Prompt
from memfactory_core.memory.bank import BankOp, Fact, MemoryBank, OpKind
from memfactory_core.memory.base import MemoryKind
from memfactory_core.metrics.qa import strip_think
from memfactory_core.retrieval.index import SearchMode

MANAGER_TEMPLATE = """\
You keep a memory bank about a conversation up to date. Compare the new fact with the related
memories already in the bank and choose one operation:
- ADD: the fact is new information.
- UPDATE: the fact corrects or adds detail to one of the memories (name its id).
- DELETE: the fact shows that one of the memories is no longer true (name its id).
- NOOP: the bank already holds this fact.

Reply with one JSON object and nothing else, with the fields
"event" (ADD, UPDATE, DELETE or NOOP), "id" (the memory's id, for UPDATE and DELETE) and,
optionally, "text" (the memory's new text; without it the new fact's own words are stored).

Related memories:
{memories}

New fact (said on {time}): {fact}"""

_EVENT_ALIASES = {"NONE": "NOOP", "NO_OP": "NOOP", "NOTHING": "NOOP", "REMOVE": "DELETE",
                  "INSERT": "ADD"}
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


class MalformedOps(ValueError):
    """A manager reply that does not describe valid operations."""


def parse_ops(text: str) -> list[BankOp]:
    """Operations from a manager reply; raises MalformedOps saying what is wrong."""
    body = strip_think(text).strip()
    fenced = _FENCE.search(body)
    if fenced:
        body = fenced.group(1).strip()
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    if not starts:
        raise MalformedOps("no JSON object in the reply")
    try:
        data, _ = json.JSONDecoder().raw_decode(body[min(starts):])
    except json.JSONDecodeError as err:
        raise MalformedOps(f"invalid JSON: {err.msg} (position {err.pos})") from None
    if isinstance(data, dict):
        items = data.get("memory", data.get("ops", [data] if ("event" in data or "op" in data)
                                            else None))
    else:
        items = data
    if not isinstance(items, list):
        raise MalformedOps("expected {\"memory\": [operations]}")
    ops = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedOps(f"operation {i} is not an object")
        event = str(item.get("event", item.get("op", ""))).strip().upper()
        event = _EVENT_ALIASES.get(event, event)
        if event not in OpKind.__members__:
            raise MalformedOps(f"operation {i}: unknown op {event or '(none)'!r}")
        raw_id = item.get("id")
        text = item.get("text", item.get("memory"))
        ops.append(BankOp(op=OpKind(event),
                          id=None if raw_id is None or event == "ADD" else str(raw_id),
                          text=None if text is None else str(text)))
    if not ops:
        raise MalformedOps("no operations")
    return ops


class MemoryManagerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(
        MANAGER_TEMPLATE,
        description="Prompt with the placeholders {fact}, {memories} and {time}.",
    )
    top_k: int = Field(5, ge=0, description="Similar entries shown for each new fact.")
    search: SearchMode = Field(SearchMode.HYBRID,
                               description="How similar entries are found: bm25, dense, hybrid.")
    max_new_tokens: int = Field(160, ge=1, description="Generation limit per decision.")
    reply_prefix: str = Field(
        "", description="Start of the reply, written for the model to continue (e.g. "
        "'{\"event\": \"'); small models produce JSON more often with it.",
    )
    constrained: bool = Field(
        False, description="Decode only valid replies: one operation on a shown id, its text "
        "left out so the fact's words are stored. Needs a local transformers model; other "
        "backends generate freely. Lets a small model (SmolLM2-135M) choose operations at all.",
    )

    @model_validator(mode="after")
    def _prefix_fits_choices(self) -> MemoryManagerParams:
        if self.constrained and not all(c.startswith(self.reply_prefix)
                                        for c in reply_choices(["m1"])):
            raise ValueError(f"reply_prefix {self.reply_prefix!r} cannot start a constrained "
                             f"reply such as {reply_choices(['m1'])[0]!r}")
        return self

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        return check_template(v, required={"fact", "memories"},
                              allowed={"fact", "memories", "time"})


def reply_choices(ids: list[str]) -> list[str]:
    """Every valid one-operation reply over the shown ``ids`` (text left out)."""
    out = ['{"event": "ADD"}', '{"event": "NOOP"}']
    for op in ("UPDATE", "DELETE"):
        out += [json.dumps({"event": op, "id": i}) for i in ids]
    return out


def format_memories(shown: list[dict[str, str]]) -> str:
    """The entries a manager sees, one ``id: text`` line each (small models read lines better
    than a JSON list)."""
    return "\n".join(f"{e['id']}: {e['text']}" for e in shown) if shown else "(none yet)"


def with_fact_text(ops: list[BankOp], fact: Fact) -> list[BankOp]:
    """ADD and UPDATE without a text store the new fact's own words."""
    return [op.model_copy(update={"text": fact.text})
            if op.op in (OpKind.ADD, OpKind.UPDATE) and not (op.text or "").strip() else op
            for op in ops]


def manager_prompt(template: str, bank: MemoryBank, fact: Fact, top_k: int,
                   mode: SearchMode) -> tuple[Prompt, list[dict[str, str]]]:
    """The decision prompt for ``fact`` and the similar entries it shows (id and text)."""
    similar = [e for e, _ in bank.search(fact.text, top_k, mode)] if top_k and len(bank) else []
    shown = [{"id": e.id, "text": e.text} for e in similar]
    content = fill(template, fact=fact.text, memories=format_memories(shown),
                   time=fact.time or "unknown")
    return [{"role": "user", "content": content}], shown


def apply_reply(bank: MemoryBank, fact: Fact, text: str) -> dict[str, Any]:
    """Apply a manager reply for ``fact``: the decision record (ops applied, or why none)."""
    decision: dict[str, Any] = {"fact": fact.text, "turn_ids": fact.turn_ids, "raw": text}
    try:
        ops = with_fact_text(parse_ops(text), fact)
        problems = bank.check_ops(ops)
        if problems:
            raise MalformedOps("; ".join(problems))
        decision["ops"] = bank.apply(ops, fact.speaker, fact.turn_ids, fact.time)
        decision["valid"] = True
    except (MalformedOps, MemFactoryError) as err:
        decision["ops"] = []
        decision["valid"] = False
        decision["error"] = str(err)
    return decision


@register
class MemoryManager(LLMComponent):
    name = "memory_manager"
    stage = Stage.MANAGE
    description = ("For each new fact, an LLM edits the bank with ADD / UPDATE / DELETE / NOOP "
                   "(mem0-style JSON), seeing the most similar entries.")
    Params = MemoryManagerParams
    inputs = (Port.FACTS,)
    outputs = (Port.OPS,)
    memory = MemoryKind.BANK
    default_role = "manager"

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        p: MemoryManagerParams = self.params  # type: ignore[assignment]
        facts = [list(s.values.get(Port.FACTS, [])) for s in batch]
        decisions: list[list[dict[str, Any]]] = [[] for _ in batch]
        tokens = [[0, 0] for _ in batch]
        # fact i of every rollout is decided in one generate call; later facts see the edits
        for i in range(max((len(f) for f in facts), default=0)):
            active = [j for j, f in enumerate(facts) if i < len(f)]
            prompts, shown = [], []
            for j in active:
                bank = batch[j].memory
                assert isinstance(bank, MemoryBank)
                prompt, ids = manager_prompt(p.template, bank, facts[j][i], p.top_k, p.search)
                if p.reply_prefix:
                    prompt.append({"role": "assistant", "content": p.reply_prefix})
                prompts.append(prompt)
                shown.append(ids)
            choices = None
            if p.constrained and self.llm.supports_choices:
                choices = [[c[len(p.reply_prefix):] for c in reply_choices([e["id"] for e in ids])]
                           for ids in shown]
            gens = self.generate(prompts, p.max_new_tokens, choices)
            for j, prompt, ids, gen in zip(active, prompts, shown, gens, strict=True):
                state = batch[j]
                bank = state.memory
                assert isinstance(bank, MemoryBank)
                decision = apply_reply(bank, facts[j][i], p.reply_prefix + gen.text)
                decision["shown"] = ids  # the entries the manager saw, as they were
                decisions[j].append(decision)
                tokens[j][0] += gen.prompt_tokens
                tokens[j][1] += gen.completion_tokens
                self.record_turn(state, prompt, gen, fact=facts[j][i].model_dump(),
                                 valid=decision["valid"], ops=decision["ops"])
        results = []
        for state, ds, (pt, ct) in zip(batch, decisions, tokens, strict=True):
            counts = {k.value: 0 for k in OpKind}
            for d in ds:
                for op in d["ops"]:
                    counts[op["op"]] += 1
            state.values[Port.OPS] = [op for d in ds for op in d["ops"]]
            results.append(StepResult(
                output=ds, prompt_tokens=pt, completion_tokens=ct,
                extra={"decisions": len(ds), "ops": counts,
                       "malformed": sum(1 for d in ds if not d["valid"])},
            ))
        return results
