"""Chatting with a memory agent (a pipeline and a model), with no Gradio in it.

A conversational pipeline (Memory-R1, RAG, RMM) ingests each user message as a turn (its
memory operations applied) and answers it from memory; a session-level pipeline (RMM) keeps
the turns of the current session and writes its memory when the session ends. A document
pipeline (MemAgent) reads a document chunk by chunk, then answers questions from its memory.

Every turn is stored in the store's ``chat_messages``: the user message, then the agent's
reply whose ``trace`` holds what the inspector shows (memory snapshot after the turn, the
turn's operations, what was retrieved, every step with its exact prompt) and what continuing
needs (the conversation session number, the turns waiting for the session's end). Reloading,
restarting, rewinding and exporting all read the store.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select

from app.agent_manager import AgentManager, LoadedModel, stream_call
from jobs.models import ChatMessage, ChatSession
from jobs.store import RunStore
from memfactory_core.components.base import Port, RolloutState
from memfactory_core.data.episode import Conversation, Session, Turn
from memfactory_core.errors import MemFactoryError
from memfactory_core.memory import Memory, MemoryBank
from memfactory_core.memory.text import TextMemory
from memfactory_core.pipeline import PipelineRuntime, load_spec, validate_spec
from memfactory_core.pipeline.trace import TraceStep
from memfactory_core.resources import Resources

MAX_MESSAGE_CHARS = 8000
"""Longest user message accepted."""
MAX_DOCUMENT_CHARS = 400_000
"""Longest document a MemAgent session reads."""
READ_QUESTION = "What in this document should be remembered to answer later questions?"
"""The question a document pipeline reads a document with before any question is asked."""
USER = "User"
SESSION_LEVEL = ("session_segmenter",)
"""Segmenters whose unit is a whole session: their pipelines write memory at session end."""
EXPORT_VERSION = 1


@dataclass
class ChatEvent:
    """What a running turn reports: ``progress`` (text), ``token`` (text), ``done``
    (the stored reply: ``message``, ``inspector``)."""

    kind: str
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def pipeline_spec(store: RunStore, name_or_spec: str | dict[str, Any]) -> dict[str, Any]:
    """A pipeline spec: a preset's name, a pipeline saved in the store, or a spec itself;
    checked."""
    if isinstance(name_or_spec, dict):
        spec = copy.deepcopy(name_or_spec)
    else:
        name = name_or_spec.strip()
        saved = store.get_pipeline(name) if name else None
        if saved is not None:
            spec = copy.deepcopy(saved.spec)
        else:
            try:
                loaded = load_spec(name)
            except (MemFactoryError, OSError) as err:
                raise MemFactoryError(f"pipeline {name!r}: not a preset nor a saved pipeline "
                                      f"({err})") from None
            spec = loaded if isinstance(loaded, dict) else loaded.model_dump(mode="json")
    validate_spec(spec)
    return spec


def restore_memory(runtime: PipelineRuntime, snapshot: Any) -> Memory:
    """The pipeline's memory in the state ``snapshot`` recorded (empty for ``None``)."""
    memory = runtime.new_memory()
    if snapshot is None:
        return memory
    if isinstance(memory, MemoryBank):
        return type(memory).from_snapshot(snapshot, memory.index.embedder)
    if isinstance(memory, TextMemory):
        memory.content = str(snapshot)
        return memory
    raise MemFactoryError(f"cannot restore a {type(memory).__name__} memory")


def turn_ops(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This turn's memory operations from its steps: ``{event, id, old, new}``."""
    ops: list[dict[str, Any]] = []
    for step in steps:
        diff = step.get("memory_diff") or {}
        for e in diff.get("added") or []:
            ops.append({"event": "ADD", "id": e.get("id"), "old": None, "new": e.get("text")})
        for e in diff.get("updated") or []:
            ops.append({"event": "UPDATE", "id": e.get("id"), "old": e.get("before"),
                        "new": e.get("after")})
        for e in diff.get("deleted") or []:
            ops.append({"event": "DELETE", "id": e.get("id"), "old": e.get("text"),
                        "new": None})
        before, after = step.get("memory_before"), step.get("memory_after")
        if after is not None and before != after:
            ops.append({"event": "REWRITE", "id": "text", "old": before, "new": after})
    return ops


def _retrieved(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for port, value in values.items():
        if port in (Port.TURNS, Port.FACTS):
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) \
                and any("score" in v for v in value):
            found[str(port)] = json.loads(json.dumps(value, default=str))
    return found


class ChatService:
    """Chat sessions over the store, with models shared through one :class:`AgentManager`."""

    def __init__(self, store: RunStore, manager: AgentManager | None = None,
                 resources: Resources | None = None) -> None:
        self.store = store
        self.manager = manager or AgentManager(store)
        self.resources = resources or Resources()
        self._runtimes: dict[tuple[str, str], PipelineRuntime] = {}

    # ---------------------------------------------------------------- sessions
    def create_session(self, pipeline: str | dict[str, Any], model: str,
                       name: str | None = None) -> int:
        """A new session with an agent; its model is loaded (or shared) now, so a model
        that cannot be loaded is refused before anything is stored."""
        spec = pipeline_spec(self.store, pipeline)
        self.manager.load(model)
        now = time.time()
        with self.store.session() as s, s.begin():
            row = ChatSession(name=(name or f"{spec['name']} · {model}")[:200],
                              pipeline=spec, model=model, created_at=now, updated_at=now)
            s.add(row)
            s.flush()
            return int(row.id)

    def sessions(self) -> list[dict[str, Any]]:
        """Every session, newest first."""
        with self.store.session() as s:
            rows = list(s.scalars(select(ChatSession).order_by(ChatSession.id.desc())))
        return [{"id": r.id, "name": r.name, "pipeline": r.pipeline.get("name"),
                 "model": r.model, "updated_at": r.updated_at} for r in rows]

    def _session(self, session_id: int) -> ChatSession:
        with self.store.session() as s:
            row = s.get(ChatSession, int(session_id))
        if row is None:
            raise MemFactoryError(f"chat session {session_id}: no such session")
        return row

    def messages(self, session_id: int) -> list[dict[str, Any]]:
        """The session's messages in order (``id, role, content, trace``)."""
        self._session(session_id)
        with self.store.session() as s:
            rows = list(s.scalars(select(ChatMessage).where(
                ChatMessage.session_id == int(session_id)).order_by(ChatMessage.id)))
        return [{"id": r.id, "role": r.role, "content": r.content, "trace": r.trace,
                 "created_at": r.created_at} for r in rows]

    def last_state(self, session_id: int) -> dict[str, Any] | None:
        """The trace of the session's last reply (the state to continue from)."""
        replies = [m for m in self.messages(session_id) if m["role"] == "assistant"]
        return replies[-1]["trace"] if replies else None

    def rewind(self, session_id: int, turns: int) -> int:
        """Keep the first ``turns`` replies (and what came before them); later messages are
        deleted. Returns how many messages were deleted."""
        if turns < 0:
            raise MemFactoryError(f"rewind: turns must be 0 or more, got {turns}")
        msgs = self.messages(session_id)
        replies = [m for m in msgs if m["role"] == "assistant"]
        if turns > len(replies):
            raise MemFactoryError(f"rewind: the session has {len(replies)} turns, not {turns}")
        keep_to = replies[turns - 1]["id"] if turns else 0
        with self.store.session() as s, s.begin():
            done = s.execute(delete(ChatMessage).where(
                ChatMessage.session_id == int(session_id), ChatMessage.id > keep_to))
        return int(done.rowcount or 0)

    def export(self, session_id: int) -> dict[str, Any]:
        """The whole session as JSON-able data."""
        row = self._session(session_id)
        return {"version": EXPORT_VERSION, "id": row.id, "name": row.name,
                "model": row.model, "pipeline": row.pipeline, "created_at": row.created_at,
                "messages": self.messages(session_id)}

    # ---------------------------------------------------------------- running
    def _runtime(self, spec: dict[str, Any], loaded: LoadedModel) -> PipelineRuntime:
        key = (json.dumps(spec, sort_keys=True), loaded.name)
        if key not in self._runtimes:
            self._runtimes[key] = PipelineRuntime(validate_spec(spec), loaded.llm,
                                                  resources=self.resources)
        return self._runtimes[key]

    def _store(self, session_id: int, role: str, content: str,
               trace: dict[str, Any] | None) -> int:
        now = time.time()
        with self.store.session() as s, s.begin():
            msg = ChatMessage(session_id=int(session_id), role=role, content=content,
                              trace=trace, created_at=now)
            s.add(msg)
            sess = s.get(ChatSession, int(session_id))
            if sess is not None:
                sess.updated_at = now
            s.flush()
            return int(msg.id)

    def is_document_pipeline(self, session_id: int) -> bool:
        """Whether the session's pipeline reads a document (MemAgent) rather than turns."""
        spec = self._session(session_id).pipeline
        return validate_spec(spec).question_conditioned

    def send(self, session_id: int, text: str) -> Iterator[ChatEvent]:
        """Ingest ``text`` as a user turn (conversational pipelines) and answer it, streaming
        the answer's tokens."""
        text = (text or "").strip()
        if not text:
            raise MemFactoryError("the message is empty")
        if len(text) > MAX_MESSAGE_CHARS:
            raise MemFactoryError(f"the message has {len(text)} characters; at most "
                                  f"{MAX_MESSAGE_CHARS}")
        return self._turn(session_id, "message", text)

    def read_document(self, session_id: int, document: str) -> Iterator[ChatEvent]:
        """A document pipeline reads ``document`` chunk by chunk (progress per chunk)."""
        document = (document or "").strip()
        if not document:
            raise MemFactoryError("the document is empty")
        if len(document) > MAX_DOCUMENT_CHARS:
            raise MemFactoryError(f"the document has {len(document)} characters; at most "
                                  f"{MAX_DOCUMENT_CHARS}")
        if not self.is_document_pipeline(session_id):
            raise MemFactoryError("this pipeline reads conversation turns, not a document: "
                                  "send the text as messages")
        return self._turn(session_id, "document", document)

    def end_session(self, session_id: int) -> Iterator[ChatEvent]:
        """What the pipeline does when a conversation session ends (a session-level writer
        such as RMM's reflection reads the session's turns); later turns start a new one."""
        return self._turn(session_id, "end_session", "")

    def _turn(self, session_id: int, kind: str, text: str) -> Iterator[ChatEvent]:
        row = self._session(session_id)
        loaded = self.manager.load(row.model or "")
        runtime = self._runtime(row.pipeline, loaded)
        prev = self.last_state(session_id) or {}
        memory = restore_memory(runtime, prev.get("memory"))
        doc_pipeline = runtime.pipeline.question_conditioned
        if kind == "message" and doc_pipeline and prev.get("memory") is None:
            raise MemFactoryError("give the agent a document to read first")
        if not loaded.lock.acquire(blocking=False):
            raise MemFactoryError(f"{loaded.name} is answering another chat: try again when "
                                  "it is done")
        try:
            user_content = text if kind != "end_session" else "(end of session)"
            self._store(session_id, "document" if kind == "document" else "user",
                        user_content, None)
            result: dict[str, Any] = {}

            def work(emit: Callable[[str, Any], None]) -> dict[str, Any]:
                return self._run(runtime, loaded, memory, kind, text, prev, emit)

            for ev_kind, value in stream_call(work):
                if ev_kind == "token":
                    yield ChatEvent("token", value)
                elif ev_kind == "progress":
                    yield value
                else:
                    result = value
        finally:
            loaded.lock.release()
        previous = prev.get("memory")
        trace = {**result, "kind": kind, "previous_memory": previous}
        msg_id = self._store(session_id, "assistant", result["reply"], trace)
        yield ChatEvent("done", result["reply"], {"message_id": msg_id, "trace": trace})

    def _run(self, runtime: PipelineRuntime, loaded: LoadedModel, memory: Memory, kind: str,
             text: str, prev: dict[str, Any], emit: Callable[[str, Any], None]
             ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        state = RolloutState(id="chat", values=values, memory=memory)
        steps: list[TraceStep] = []
        conv_session = int(prev.get("session", 1))
        turn_no = int(prev.get("turn", 0)) + (kind == "message")
        pending: list[dict[str, Any]] = list(prev.get("pending") or [])
        session_level = runtime._segmenter.name in SESSION_LEVEL
        doc_pipeline = runtime.pipeline.question_conditioned
        ingest: list[dict[str, Any]] = []
        if kind == "document":
            values[Port.DOCUMENT] = text
            values[Port.QUESTION] = READ_QUESTION
        elif kind == "message" and not doc_pipeline:
            turn = {"id": f"D{conv_session}:{turn_no}", "speaker": USER, "text": text,
                    "session": conv_session,
                    "time": datetime.now(UTC).strftime("%d %B %Y")}
            if session_level:
                pending.append(turn)
            else:
                ingest = [turn]
        elif kind == "end_session" and session_level:
            ingest, pending = pending, []
        if ingest:
            turns = [Turn(**t) for t in ingest]
            values[Port.CONVERSATION] = Conversation(speakers=[USER], sessions=[
                Session(index=conv_session, time=turns[0].time, turns=turns)])
        if ingest or kind == "document":
            self._ingest(runtime, state, steps, emit)
        retrieved: dict[str, Any] = {}
        if kind == "end_session":
            reply = (f"Session {conv_session} ended: the memory was written from its "
                     f"{len(ingest)} turns." if ingest else f"Session {conv_session} ended.")
            conv_session, turn_no = conv_session + 1, 0
        elif kind == "document":
            reply = "I read the document; ask me about it."
        else:
            values[Port.QUESTION] = text
            loaded.llm.sink = lambda piece: emit("token", piece)
            try:
                for slot, comp in runtime._query:
                    runtime._run_slot(slot, comp, [(state, steps)], unit=None)
            finally:
                loaded.llm.sink = None
            reply = str(values.get(Port.ANSWER) or "").strip() or "(no answer)"
            retrieved = _retrieved(values)
        step_dicts = [s.model_dump(mode="json") for s in steps]
        return {"reply": reply, "memory": memory.snapshot(), "session": conv_session,
                "turn": turn_no, "pending": pending, "steps": step_dicts,
                "ops": turn_ops(step_dicts), "retrieved": retrieved,
                "memory_kind": type(memory).__name__}

    @staticmethod
    def _ingest(runtime: PipelineRuntime, state: RolloutState, steps: list[TraceStep],
                emit: Callable[[str, Any], None]) -> None:
        seg = runtime._segmenter
        t0 = time.perf_counter()
        units, res = seg.segment(state)
        for port in (Port.DOCUMENT, Port.CONVERSATION):
            state.values.pop(port, None)
        steps.append(TraceStep(lane="ingest", slot=0, component=seg.name, output=res.output,
                               seconds=time.perf_counter() - t0, extra=res.extra))
        unit_port = runtime._unit_port
        for u, unit in enumerate(units):
            state.values[unit_port] = unit
            for slot, comp in runtime._ingest[1:]:
                runtime._run_slot(slot, comp, [(state, steps)], unit=u)
            emit("progress", ChatEvent("progress", f"read {u + 1}/{len(units)}",
                                    {"done": u + 1, "total": len(units),
                                     "memory": state.memory.snapshot()}))
