"""The unit the runtime consumes: a long context (a document or a conversation) and the
questions asked about it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class QA(BaseModel):
    """A question with its accepted answers, the turn ids of its evidence and its category."""

    id: str
    question: str
    answers: list[str]
    evidence: list[str] = Field(default_factory=list)
    category: int | str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class Turn(BaseModel):
    """One utterance of a conversation. ``facts`` are given observations about it (LoCoMo)."""

    id: str  # e.g. "D3:5": session 3, turn 5
    speaker: str
    text: str
    session: int
    time: str | None = None  # the session's date-time, as the data gives it
    facts: list[str] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)


class Session(BaseModel):
    """A dated sitting of a conversation."""

    index: int
    time: str | None = None
    turns: list[Turn]


class Conversation(BaseModel):
    """Sessions of turns between speakers."""

    speakers: list[str]
    sessions: list[Session]

    def turns(self) -> list[Turn]:
        return [t for s in self.sessions for t in s.turns]


class Episode(BaseModel):
    """A long context and the questions about it: a document (``context``), a conversation,
    or both."""

    id: str
    context: str = ""
    conversation: Conversation | None = None
    questions: list[QA]
    meta: dict[str, Any] = Field(default_factory=dict)
