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
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from app.agent_manager import AgentManager, LoadedModel, stream_call
from jobs.models import ChatMessage, ChatSession
from jobs.store import RunStore
from memfactory_core.components.base import Port
from memfactory_core.errors import MemFactoryError
from memfactory_core.memory import Memory
from memfactory_core.paths import memfactory_home
from memfactory_core.pipeline import LiveSession, PipelineRuntime, load_spec, validate_spec
from memfactory_core.pipeline.trace import TraceStep
from memfactory_core.resources import Resources

MAX_MESSAGE_CHARS = 8000
"""Longest user message accepted."""
MAX_DOCUMENT_CHARS = 400_000
"""Longest document a MemAgent session reads."""
USER = "User"
EXPORT_VERSION = 1
DOCUMENT_FOLDERS = ("documents", "data")
"""Workspace folders (under ``$MEMFACTORY_HOME``) whose text files a MemAgent session can read:
``documents/`` for chat documents, ``data/`` for data files and uploads."""
DOCUMENT_SUFFIXES = (".txt", ".md", ".json", ".jsonl")
MAX_DOCUMENT_BYTES = 2_000_000
"""Largest workspace file offered or read as a document."""
MAX_LISTED_DOCUMENTS = 500


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
    return runtime.restore_memory(snapshot)


def turn_ops(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This turn's memory operations from its steps: ``{event, id, old, new}`` (a topic
    merged into another is a ``MERGE``)."""
    ops: list[dict[str, Any]] = []
    for step in steps:
        diff = step.get("memory_diff") or {}
        merged = {m.get("id") for m in diff.get("merged") or []}
        for e in diff.get("added") or []:
            ops.append({"event": "ADD", "id": e.get("id"), "old": None, "new": e.get("text")})
        for e in diff.get("updated") or []:
            ops.append({"event": "MERGE" if e.get("id") in merged else "UPDATE",
                        "id": e.get("id"), "old": e.get("before"), "new": e.get("after")})
        for e in diff.get("deleted") or []:
            ops.append({"event": "DELETE", "id": e.get("id"), "old": e.get("text"),
                        "new": None})
        before, after = step.get("memory_before"), step.get("memory_after")
        if after is not None and before != after:
            ops.append({"event": "REWRITE", "id": "text", "old": before, "new": after})
    return ops


def _document_roots() -> list[Path]:
    home = memfactory_home()
    (home / DOCUMENT_FOLDERS[0]).mkdir(exist_ok=True)
    return [(home / name).resolve() for name in DOCUMENT_FOLDERS]


def workspace_documents() -> list[str]:
    """The workspace's text files a MemAgent session can read, as paths relative to the
    workspace (``documents/notes.md``): ``.txt``, ``.md``, ``.json``, ``.jsonl`` files up to
    :data:`MAX_DOCUMENT_BYTES` under :data:`DOCUMENT_FOLDERS`, hidden entries and links that
    lead out of their folder left out."""
    home = memfactory_home().resolve()
    found: list[str] = []
    for root in _document_roots():
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(folder) / name
                if name.startswith(".") or path.suffix.lower() not in DOCUMENT_SUFFIXES:
                    continue
                real = path.resolve()
                if not real.is_relative_to(root) or not real.is_file() or \
                        real.stat().st_size > MAX_DOCUMENT_BYTES:
                    continue
                found.append(path.relative_to(home).as_posix())
                if len(found) >= MAX_LISTED_DOCUMENTS:
                    return found
    return found


def read_workspace_document(ref: str) -> str:
    """The text of workspace file ``ref`` (a path relative to the workspace, as
    :func:`workspace_documents` lists them). Absolute paths, ``..``, hidden entries, links
    that lead out of the folder, other kinds of file and files over the size limit are
    refused, each with a message naming the path."""
    ref = (ref or "").strip()
    home = memfactory_home()
    where = f"the workspace's {' or '.join(f'{d}/' for d in DOCUMENT_FOLDERS)} folder"
    if not ref:
        raise MemFactoryError(f"choose a file from {where} ({home})")
    rel = Path(ref)
    if rel.is_absolute() or ref.startswith("~"):
        raise MemFactoryError(f"{ref!r}: give a path relative to the workspace ({home}), "
                              f"such as documents/notes.txt")
    if ".." in rel.parts:
        raise MemFactoryError(f"{ref!r}: '..' would leave the workspace; choose a file in "
                              f"{where}")
    if rel.parts[0] not in DOCUMENT_FOLDERS or len(rel.parts) < 2:
        raise MemFactoryError(f"{ref!r} is not in {where}")
    if any(part.startswith(".") for part in rel.parts):
        raise MemFactoryError(f"{ref!r}: hidden files and folders are not read")
    if rel.suffix.lower() not in DOCUMENT_SUFFIXES:
        raise MemFactoryError(f"{ref!r}: only {', '.join(DOCUMENT_SUFFIXES)} files are read")
    root = (home / rel.parts[0]).resolve()
    real = (home / rel).resolve()
    if not real.is_relative_to(root):
        raise MemFactoryError(f"{ref!r} is a link that leads out of {where}: refused")
    if not real.is_file():
        raise MemFactoryError(f"{ref!r}: no such file in the workspace ({home})")
    size = real.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        raise MemFactoryError(f"{ref!r} has {size} bytes; a document has at most "
                              f"{MAX_DOCUMENT_BYTES}")
    data = real.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MemFactoryError(f"{ref!r} is not UTF-8 text (byte {err.start})") from None


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
        return Port.DOCUMENT in validate_spec(spec).ingest[0].cls.inputs

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

    def read_document(self, session_id: int, document: str,
                      source: str | None = None) -> Iterator[ChatEvent]:
        """A document pipeline reads ``document`` chunk by chunk (progress per chunk);
        ``source`` names where it came from (a workspace file) in the reply's trace."""
        document = (document or "").strip()
        what = f"{source!r}" if source else "the document"
        if not document:
            raise MemFactoryError(f"{what} is empty")
        if len(document) > MAX_DOCUMENT_CHARS:
            raise MemFactoryError(f"{what} has {len(document)} characters; at most "
                                  f"{MAX_DOCUMENT_CHARS}")
        if not self.is_document_pipeline(session_id):
            raise MemFactoryError("this pipeline reads conversation turns, not a document: "
                                  "send the text as messages")
        return self._turn(session_id, "document", document, source)

    def read_workspace_file(self, session_id: int, ref: str) -> Iterator[ChatEvent]:
        """A document pipeline reads the workspace file ``ref`` (see
        :func:`read_workspace_document`)."""
        self._session(session_id)
        return self.read_document(session_id, read_workspace_document(ref), source=ref)

    def end_session(self, session_id: int) -> Iterator[ChatEvent]:
        """What the pipeline does when a conversation session ends (a session-level writer
        such as RMM's reflection reads the session's turns); later turns start a new one."""
        return self._turn(session_id, "end_session", "")

    def _turn(self, session_id: int, kind: str, text: str,
              source: str | None = None) -> Iterator[ChatEvent]:
        row = self._session(session_id)
        loaded = self.manager.load(row.model or "")
        runtime = self._runtime(row.pipeline, loaded)
        prev = self.last_state(session_id) or {}
        live = runtime.live(prev or None)
        if kind == "message" and live.reads_document and prev.get("memory") is None:
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
                return self._run(live, loaded, kind, text, prev, emit)

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
        if source:
            trace["source"] = source
        msg_id = self._store(session_id, "assistant", result["reply"], trace)
        yield ChatEvent("done", result["reply"], {"message_id": msg_id, "trace": trace})

    @staticmethod
    def _run(live: LiveSession, loaded: LoadedModel, kind: str, text: str,
             prev: dict[str, Any], emit: Callable[[str, Any], None]) -> dict[str, Any]:
        doc_pipeline = live.reads_document
        conv_session, questions = live.session, int(prev.get("turn", 0))
        steps: list[TraceStep] = []
        retrieved: dict[str, Any] = {}

        def progress(done: int, total: int, memory: Memory) -> None:
            emit("progress", ChatEvent("progress", f"read {done}/{total}",
                                       {"done": done, "total": total,
                                        "memory": memory.snapshot()}))

        if kind == "document":
            steps += live.read_document(text, progress).steps
            reply = "I read the document; ask me about it."
        elif kind == "end_session":
            ended = live.end_session(progress)
            steps += ended.steps
            reply = (f"Session {conv_session} ended: the memory was written from its "
                     f"{len(ended.ingested)} turns." if ended.ingested
                     else f"Session {conv_session} ended.")
        else:
            if not doc_pipeline:
                steps += live.add_turn(USER, text, datetime.now(UTC).strftime("%d %B %Y")).steps
            loaded.llm.sink = lambda piece: emit("token", piece)
            try:
                asked = live.ask(text)
            finally:
                loaded.llm.sink = None
            steps += asked.steps
            reply = (asked.answer or "").strip() or "(no answer)"
            retrieved = asked.retrieved
        state = live.checkpoint()
        if doc_pipeline:  # a document pipeline counts the questions asked as its turns
            state["turn"] = questions + (kind == "message")
        step_dicts = [s.model_dump(mode="json") for s in steps]
        return {"reply": reply, **state, "steps": step_dicts, "ops": turn_ops(step_dicts),
                "retrieved": retrieved, "memory_kind": type(live.memory).__name__}
