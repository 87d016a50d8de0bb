"""Conversation segmenters: stream a conversation turn by turn or session by session."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.components.base import Port, RolloutState, Segmenter, StepResult, register
from memfactory_core.data.episode import Conversation


class ConversationSegmenterParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_units: int | None = Field(
        None, ge=1, description="Most units (turns or sessions) read (None: all)."
    )


class _ConversationSegmenter(Segmenter):
    Params = ConversationSegmenterParams
    inputs = (Port.CONVERSATION,)
    outputs = (Port.TURNS,)
    unit_name = "unit"

    def units(self, conversation: Conversation) -> list[list[Any]]:
        raise NotImplementedError

    def segment(self, state: RolloutState) -> tuple[list[Any], StepResult]:
        p: ConversationSegmenterParams = self.params  # type: ignore[assignment]
        conversation: Conversation = state.values[Port.CONVERSATION]
        units = self.units(conversation)
        total = len(units)
        if p.max_units is not None:
            units = units[: p.max_units]
        turns = sum(len(u) for u in units)
        return units, StepResult(
            output=f"{len(units)} {self.unit_name}(s)"
            + (f", {turns} turn(s)" if self.unit_name != "turn" else ""),
            extra={"units": len(units), "turns": turns, "dropped_units": total - len(units),
                   "sessions": len(conversation.sessions)},
        )


@register
class TurnSegmenter(_ConversationSegmenter):
    name = "turn_segmenter"
    description = "Stream a conversation one turn at a time."
    unit_name = "turn"

    def units(self, conversation: Conversation) -> list[list[Any]]:
        return [[t] for t in conversation.turns()]


@register
class SessionSegmenter(_ConversationSegmenter):
    name = "session_segmenter"
    description = "Stream a conversation one session (all its turns) at a time."
    unit_name = "session"

    def units(self, conversation: Conversation) -> list[list[Any]]:
        return [list(s.turns) for s in conversation.sessions if s.turns]
