"""Fact extraction from conversation turns: an LLM extractor and the data's given facts."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from memfactory_core.components.base import (
    Component,
    LLMComponent,
    Port,
    RolloutState,
    Stage,
    StepResult,
    register,
)
from memfactory_core.components.templates import check_template, fill
from memfactory_core.data.episode import Turn
from memfactory_core.llm.base import Generation, Prompt
from memfactory_core.memory.bank import Fact
from memfactory_core.metrics.qa import strip_think


def render_turns(turns: list[Turn]) -> str:
    """Turns as ``[D1:3] Caroline: text`` lines under their session's date."""
    lines: list[str] = []
    time = None
    for t in turns:
        if t.time != time:
            time = t.time
            lines.append(f"(date: {time})" if time else "(date unknown)")
        lines.append(f"[{t.id}] {t.speaker}: {t.text}")
    return "\n".join(lines)


class GivenFactsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fallback: Literal["none", "turn_text"] = Field(
        "none",
        description="For a turn without given facts: nothing (none), or the turn itself as "
        "'Speaker: text' (turn_text), e.g. for data without observations.",
    )


@register
class GivenFacts(Component):
    name = "given_facts"
    stage = Stage.EXTRACT
    description = ("Facts given with the data (LoCoMo's observations), attributed to their "
                   "turns: a deterministic, offline stand-in for an extractor LLM.")
    Params = GivenFactsParams
    inputs = (Port.TURNS,)
    outputs = (Port.FACTS,)

    def run(self, batch: list[RolloutState]) -> list[StepResult]:
        p: GivenFactsParams = self.params  # type: ignore[assignment]
        results = []
        for state in batch:
            facts: list[Fact] = []
            for turn in state.values[Port.TURNS]:
                texts = turn.facts or (
                    [f"{turn.speaker}: {turn.text}"] if p.fallback == "turn_text" else [])
                facts.extend(Fact(text=t, speaker=turn.speaker, turn_ids=[turn.id],
                                  time=turn.time) for t in texts)
            state.values[Port.FACTS] = facts
            results.append(StepResult(output=[f.text for f in facts],
                                      extra={"facts": len(facts)}))
        return results


FACT_TEMPLATE = """\
Here is part of a conversation between {speakers}.

{turns}

Write down what is worth remembering about the speakers from these lines: events, plans,
preferences, possessions, relationships and the dates they happened. One short sentence per
line that names the person and stands on its own; turn relative dates ("yesterday", "last
week") into dates using the date above. If nothing is worth remembering, write NONE.

Facts:"""

_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def parse_fact_lines(text: str, max_facts: int) -> list[str]:
    """Fact sentences from an extractor reply: one per line, bullets and numbering removed."""
    out = []
    for line in strip_think(text).splitlines():
        line = _BULLET.sub("", line).strip()
        if len(line) < 3 or line.upper().rstrip(".") in {"NONE", "FACTS:"}:
            continue
        out.append(line)
        if len(out) >= max_facts:
            break
    return out


class FactExtractorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(FACT_TEMPLATE,
                          description="Prompt with the placeholders {turns} and {speakers}.")
    max_new_tokens: int = Field(128, ge=1, description="Generation limit for the facts.")
    max_facts: int = Field(5, ge=1, description="Most facts kept per unit.")

    @field_validator("template")
    @classmethod
    def _check_template(cls, v: str) -> str:
        return check_template(v, required={"turns"}, allowed={"turns", "speakers"})


@register
class FactExtractor(LLMComponent):
    name = "fact_extractor"
    stage = Stage.EXTRACT
    description = "An LLM lists the facts worth remembering in the current turns."
    Params = FactExtractorParams
    inputs = (Port.TURNS,)
    outputs = (Port.FACTS,)
    default_role = "extractor"

    def prompt(self, state: RolloutState) -> Prompt:
        p: FactExtractorParams = self.params  # type: ignore[assignment]
        turns: list[Turn] = state.values[Port.TURNS]
        speakers = " and ".join(dict.fromkeys(t.speaker for t in turns)) or "the speakers"
        return [{"role": "user",
                 "content": fill(p.template, turns=render_turns(turns), speakers=speakers)}]

    def read(self, state: RolloutState, prompt: Prompt, gen: Generation) -> StepResult:
        p: FactExtractorParams = self.params  # type: ignore[assignment]
        turns: list[Turn] = state.values[Port.TURNS]
        speakers = list(dict.fromkeys(t.speaker for t in turns))
        facts = []
        for text in parse_fact_lines(gen.text, p.max_facts):
            named = [s for s in speakers if s.lower() in text.lower()]
            speaker = named[0] if len(named) == 1 else (speakers[0] if len(speakers) == 1
                                                         else None)
            own = [t.id for t in turns if speaker is None or t.speaker == speaker]
            facts.append(Fact(text=text, speaker=speaker, turn_ids=own or [t.id for t in turns],
                              time=turns[-1].time if turns else None))
        state.values[Port.FACTS] = facts
        return StepResult(output=gen.text, extra={"facts": len(facts)})
