"""A pipeline driven one call at a time, as a chat drives it: read a document, add the turns of
a conversation as they come, ask a question, end a conversation session.

A live session is one rollout of :class:`~memfactory_core.pipeline.runtime.PipelineRuntime`
and goes through the same code as an evaluation: the runtime's ``segment``, ``ingest_unit``
and ``run_query``, so a memory written in a chat is the memory an evaluation of the same
pipeline would write from the same turns. Each call returns this call's trace steps and the
memory after it; :meth:`LiveSession.checkpoint` is the JSON-able state to resume from.

Conversation turns are ingested as they are added, except by a pipeline whose unit is a
whole session (RMM's session segmenter): its turns wait for :meth:`LiveSession.end_session`,
where the ingest lane (RMM's reflection) reads them together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memfactory_core.components.base import Component, Port, RolloutState
from memfactory_core.data.episode import Conversation, Session, Turn
from memfactory_core.errors import MemFactoryError
from memfactory_core.memory import Memory
from memfactory_core.pipeline.spec import ResolvedSlot
from memfactory_core.pipeline.trace import TraceStep

if TYPE_CHECKING:
    from memfactory_core.pipeline.runtime import PipelineRuntime

READ_QUESTION = "What in this document should be remembered to answer later questions?"
"""The question a question-conditioned pipeline (MemAgent) reads a document with when no
question has been asked yet."""

OnProgress = Callable[[int, int, Memory], None]
"""Called after each unit is ingested: ``(units done, units in all, memory now)``."""


@dataclass
class LiveResult:
    """What one call of a live session did."""

    #: this call's trace steps, in order
    steps: list[TraceStep]
    #: the session's memory after the call (the live object: snapshot it to keep it)
    memory: Memory
    #: the answer (``ask``), else None
    answer: str | None = None
    #: what the query lane retrieved, by port; a port written again by a later slot (a
    #: reranker keeping some of the retrieved entries) also appears as ``"<port> (<slot>)"``
    retrieved: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: the turns written to memory by this call (``add_turn``, ``end_session``)
    ingested: list[Turn] = field(default_factory=list)
    #: how many units the ingest lane went through
    units: int = 0


def _scored(value: Any) -> list[dict[str, Any]] | None:
    """``value`` as JSON-able data when it is a list of scored entries (a retrieval)."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) \
            and any("score" in v for v in value):
        return json.loads(json.dumps(value, default=str))
    return None


class LiveSession:
    """One rollout of a pipeline, driven call by call. Make it with ``runtime.live()``."""

    def __init__(self, runtime: PipelineRuntime, memory: Memory | None = None, *,
                 session: int = 1, turn: int = 0, pending: Sequence[Turn] = ()) -> None:
        self.runtime = runtime
        self.memory = memory if memory is not None else runtime.new_memory()
        #: the current conversation session's number and its last turn's number
        self.session = session
        self.turn = turn
        #: turns added in this session that wait for its end (session-level pipelines)
        self.pending: list[Turn] = list(pending)
        self.state = RolloutState(id="live", values={}, memory=self.memory)

    @classmethod
    def resume(cls, runtime: PipelineRuntime, checkpoint: dict[str, Any] | None
               ) -> LiveSession:
        """A session in the state ``checkpoint`` recorded (a new one for ``None``)."""
        cp = checkpoint or {}
        try:
            pending = [Turn.model_validate(t) for t in cp.get("pending") or []]
            session, turn = int(cp.get("session", 1)), int(cp.get("turn", 0))
        except (TypeError, ValueError) as err:
            raise MemFactoryError(f"live session checkpoint: {err}") from None
        return cls(runtime, runtime.restore_memory(cp.get("memory")), session=session,
                   turn=turn, pending=pending)

    def checkpoint(self) -> dict[str, Any]:
        """JSON-able state to resume from: memory snapshot, session, turn, pending turns."""
        return {"memory": self.memory.snapshot(), "session": self.session, "turn": self.turn,
                "pending": [t.model_dump(mode="json") for t in self.pending]}

    # -- what the pipeline reads ---------------------------------------------------------

    @property
    def reads_document(self) -> bool:
        """Whether the pipeline's segmenter reads a document (MemAgent) rather than turns."""
        return Port.DOCUMENT in self.runtime.segmenter.inputs

    @property
    def reads_conversation(self) -> bool:
        """Whether the pipeline's segmenter reads a conversation."""
        return Port.CONVERSATION in self.runtime.segmenter.inputs

    @property
    def writes_at_session_end(self) -> bool:
        """Whether the pipeline's unit is a whole conversation session, so turns are
        ingested when the session ends (RMM)."""
        return getattr(self.runtime.segmenter, "unit_name", None) == "session"

    # -- calls -----------------------------------------------------------------------------

    def read_document(self, text: str, on_progress: OnProgress | None = None,
                      question: str = READ_QUESTION) -> LiveResult:
        """The ingest lane reads ``text`` unit by unit (chunks); a question-conditioned
        pipeline reads it with ``question``."""
        if not self.reads_document:
            raise MemFactoryError(f"pipeline {self.runtime.pipeline.spec.name!r} reads "
                                  "conversation turns, not a document: add them as turns")
        if not text.strip():
            raise MemFactoryError("the document is empty")
        self.state.values[Port.DOCUMENT] = text
        if self.runtime.pipeline.question_conditioned:
            self.state.values[Port.QUESTION] = question
        steps: list[TraceStep] = []
        units = self._ingest(steps, on_progress)
        return LiveResult(steps, self.memory, units=units)

    def add_turn(self, speaker: str, text: str, time: str | None = None) -> LiveResult:
        """A conversation turn: ingested now, or kept for the session's end when the
        pipeline writes memory per session."""
        if not self.reads_conversation:
            raise MemFactoryError(f"pipeline {self.runtime.pipeline.spec.name!r} reads a "
                                  "document, not conversation turns: read a document first")
        if not text.strip():
            raise MemFactoryError("the turn is empty")
        self.turn += 1
        turn = Turn(id=f"D{self.session}:{self.turn}", speaker=speaker, text=text,
                    session=self.session, time=time)
        if self.writes_at_session_end:
            self.pending.append(turn)
            return LiveResult([], self.memory)
        return self._ingest_turns([turn], None)

    def ask(self, question: str) -> LiveResult:
        """The query lane answers ``question`` from the memory."""
        if not question.strip():
            raise MemFactoryError("the question is empty")
        self.state.values[Port.QUESTION] = question
        self.state.values.pop(Port.ANSWER, None)
        steps: list[TraceStep] = []
        retrieved: dict[str, list[dict[str, Any]]] = {}

        def look(slot: ResolvedSlot, comp: Component) -> None:
            for port in comp.outputs:
                found = _scored(self.state.values.get(port))
                if found is not None:
                    key = str(port) if port not in retrieved else f"{port} ({comp.name})"
                    retrieved[key] = found

        self.runtime.run_query([(self.state, steps)], after_slot=look)
        answer = self.state.values.get(Port.ANSWER)
        return LiveResult(steps, self.memory, answer=None if answer is None else str(answer),
                          retrieved=retrieved)

    def end_session(self, on_progress: OnProgress | None = None) -> LiveResult:
        """End the current conversation session: a session-level pipeline ingests its
        waiting turns now; later turns belong to the next session."""
        pending, self.pending = self.pending, []
        result = self._ingest_turns(pending, on_progress) if pending else \
            LiveResult([], self.memory)
        self.session += 1
        self.turn = 0
        return result

    # -- helpers ---------------------------------------------------------------------------

    def _ingest_turns(self, turns: list[Turn], on_progress: OnProgress | None) -> LiveResult:
        speakers = list(dict.fromkeys(t.speaker for t in turns))
        self.state.values[Port.CONVERSATION] = Conversation(speakers=speakers, sessions=[
            Session(index=turns[0].session, time=turns[0].time, turns=turns)])
        steps: list[TraceStep] = []
        units = self._ingest(steps, on_progress)
        return LiveResult(steps, self.memory, ingested=turns, units=units)

    def _ingest(self, steps: list[TraceStep], on_progress: OnProgress | None) -> int:
        units, step = self.runtime.segment(self.state)
        steps.append(step)
        for u, unit in enumerate(units):
            self.runtime.ingest_unit([(self.state, steps, unit)], u)
            if on_progress is not None:
                on_progress(u + 1, len(units), self.memory)
        return len(units)
