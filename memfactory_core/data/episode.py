"""The unit the runtime consumes: a context and the questions asked about it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class QA(BaseModel):
    """A question with its accepted answers."""

    id: str
    question: str
    answers: list[str]
    meta: dict[str, Any] = Field(default_factory=dict)


class Episode(BaseModel):
    """A long context (document text) and the questions about it."""

    id: str
    context: str
    questions: list[QA]
    meta: dict[str, Any] = Field(default_factory=dict)
