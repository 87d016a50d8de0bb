"""The Chat tab: talk to a memory agent (a pipeline and a model) beside a memory inspector
that shows, after each turn, the memory now (a word-level diff against the previous turn for
text, a table with validity and history for a bank), the turn's operations, what was
retrieved with its scores and every step's exact prompt (the trace viewer).

The logic lives in :mod:`app.chat_service` (no Gradio); this module lays it out and exposes
the named endpoints ``/chat_new_session``, ``/chat_send``, ``/chat_read_document``,
``/chat_workspace_files``, ``/chat_read_workspace_file``, ``/chat_model_backends``,
``/chat_messages``, ``/chat_rewind`` and ``/chat_export``.
"""

# No ``from __future__ import annotations``: gr.api reads the endpoints' annotations.

import html
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app.agent_manager import agent_model_name, model_backends
from app.chat_service import (
    DOCUMENT_FOLDERS,
    MAX_DOCUMENT_BYTES,
    ChatService,
    workspace_documents,
)
from app.context import AppContext
from app.trace_view import CSS as TRACE_CSS
from app.trace_view import as_text, trace_html, word_diff_html
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import PIPELINES_DIR, memfactory_home

SAMPLE_DOCUMENT = "bundled sample (a HotpotQA context)"
WORKSPACE_DOCUMENT = "workspace file"
INSPECTOR_CSS = TRACE_CSS + """
.mf-inspector table { border-collapse: collapse; font-size: 12px; width: 100%; }
.mf-inspector td, .mf-inspector th { border: 1px solid var(--border-color-primary, #ddd);
  padding: 2px 4px; vertical-align: top; }
.mf-inspector tr.mf-closed td { color: #888; text-decoration: line-through; }
.mf-inspector pre { white-space: pre-wrap; font-size: 12px; }
.mf-inspector ins { background: #c8f7c5; text-decoration: none; }
.mf-inspector del { background: #f9c9c9; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def memory_html(memory: Any, previous: Any, kind: str | None = None) -> str:
    """The memory now: text as a word-level diff against ``previous``; a bank as a table of
    entries with validity and their earlier texts; a topic memory (``kind``
    ``TopicMemory``) as its topic summaries with their source turns and merges."""
    topics = kind == "TopicMemory"
    if memory is None:
        return "<p class='mf-meta'>Empty memory.</p>"
    if isinstance(memory, str):
        return f"<pre class='mf-memory-text'>{word_diff_html(previous or '', memory)}</pre>"
    entries = memory.get("entries") if isinstance(memory, dict) else None
    if entries is None:
        return f"<pre>{_esc(as_text(memory))}</pre>"
    if not entries:
        if topics:
            return ("<p class='mf-meta mf-no-topics'>No topics in memory: topics are "
                    "written when a session ends (End session), from that session's "
                    "turns.</p>")
        return "<p class='mf-meta'>The bank is empty.</p>"
    before = {e.get("id"): e for e in (previous or {}).get("entries") or []} \
        if isinstance(previous, dict) else {}
    rows = []
    for e in entries:
        closed = bool(e.get("closed"))
        valid = f"{_esc(e.get('valid_from') or e.get('created_at') or '')} → " \
                f"{_esc(e.get('valid_to') or ('closed' if closed else 'now'))}"
        old = before.get(e.get("id"))
        text = word_diff_html(old.get("text"), e.get("text")) if old else \
            f"<ins>{_esc(e.get('text'))}</ins>"
        history = "<br>".join(_esc(as_text(h.get("text") if isinstance(h, dict) else h))
                              for h in e.get("history") or [])
        if topics:
            sources = _esc(", ".join(e.get("turn_ids") or []))
            merged = "<br>".join(f"+ {_esc(m.get('summary'))}" for m in e.get("merged") or [])
            rows.append(f"<tr class='mf-topic {'mf-closed' if closed else 'mf-open'}' "
                        f"data-id='{_esc(e.get('id'))}'><td>{_esc(e.get('id'))}</td>"
                        f"<td>{_esc(e.get('speaker') or '')}</td><td>{text}</td>"
                        f"<td>{sources}</td><td>{merged}</td><td>{valid}</td></tr>")
            continue
        extra = _esc(e.get("topic") or e.get("speaker") or "")
        rows.append(f"<tr class='{'mf-closed' if closed else 'mf-open'}' "
                    f"data-id='{_esc(e.get('id'))}'><td>{_esc(e.get('id'))}</td>"
                    f"<td>{extra}</td><td>{text}</td><td>{valid}</td><td>{history}</td></tr>")
    if topics:
        return ("<table class='mf-bank mf-topics'><tr><th>id</th><th>speaker</th>"
                "<th>topic summary</th><th>source turns</th><th>merged in</th><th>valid</th>"
                "</tr>" + "".join(rows) + "</table>")
    return ("<table class='mf-bank'><tr><th>id</th><th>speaker / topic</th><th>text</th>"
            "<th>valid</th><th>history</th></tr>" + "".join(rows) + "</table>")


def ops_html(ops: list[dict[str, Any]]) -> str:
    """This turn's operations: event, id, old → new."""
    if not ops:
        return "<p class='mf-meta mf-ops'>No memory operations this turn.</p>"
    rows = "".join(
        f"<tr class='mf-op'><td>{_esc(o.get('event'))}</td><td>{_esc(o.get('id'))}</td>"
        f"<td>{word_diff_html(o.get('old') or '', o.get('new') or '')}</td></tr>"
        for o in ops)
    return (f"<table class='mf-ops'><tr><th>event</th><th>id</th><th>old → new</th></tr>"
            f"{rows}</table>")


def retrieved_html(retrieved: dict[str, list[dict[str, Any]]]) -> str:
    """What each retrieval (and a reranker) kept, with scores."""
    if not retrieved:
        return "<p class='mf-meta'>Nothing retrieved this turn.</p>"
    parts = []
    for port, items in retrieved.items():
        reranked = any("rerank_score" in i for i in items)
        rows = "".join(
            f"<tr><td>{_esc(i.get('id'))}</td><td>{_esc(i.get('text'))}</td>"
            f"<td>{float(i.get('score') or 0):.3f}</td>"
            + (f"<td>{float(i.get('rerank_score') or 0):.3f}</td>" if reranked else "")
            + "</tr>" for i in items)
        head = "<th>score</th>" + ("<th>rerank score</th>" if reranked else "")
        parts.append(f"<b>{_esc(port)}</b> ({len(items)})<table><tr><th>id</th><th>text</th>"
                     f"{head}</tr>{rows}</table>")
    return "".join(parts)


def inspector_html(trace: dict[str, Any] | None) -> str:
    """The whole inspector for one stored reply's trace."""
    if not trace:
        return "<div class='mf-inspector mf-meta'>No turn yet.</div>"
    pending = trace.get("pending") or []
    waiting = (f"<p class='mf-meta'>{len(pending)} turn(s) wait for the end of session "
               f"{trace.get('session')}.</p>") if pending else ""
    now = memory_html(trace.get("memory"), trace.get("previous_memory"),
                      trace.get("memory_kind"))
    source = (f"<p class='mf-meta mf-source'>Read from {_esc(trace['source'])}</p>"
              if trace.get("source") else "")
    reflections = [st.get("extra") or {} for st in trace.get("steps") or []
                   if st.get("component") == "prospective_reflection"]
    if reflections:
        found = sum(int(x.get("topics") or 0) for x in reflections)
        bad = sum(int(x.get("malformed") or 0) for x in reflections)
        source += (f"<p class='mf-meta mf-reflection'>Session-end reflection: {found} "
                   f"topic(s) extracted, {bad} unreadable repl{'y' if bad == 1 else 'ies'}"
                   f"{' (see them in the trace)' if bad else ''}.</p>")
    return (f"<div class='mf-inspector' data-turn='{_esc(trace.get('turn'))}' "
            f"data-kind='{_esc(trace.get('kind'))}'>"
            f"<h4>Memory now ({_esc(trace.get('memory_kind'))})</h4>"
            f"{source}<div id='mf-memory-now'>{now}</div>{waiting}"
            f"<h4>This turn's operations</h4>"
            f"{ops_html(trace.get('ops') or [])}"
            f"<h4>Retrieved</h4>{retrieved_html(trace.get('retrieved') or {})}</div>")


def history(chat: ChatService, session_id: int | None) -> list[dict[str, str]]:
    """The session's messages as the chatbot shows them."""
    if not session_id:
        return []
    out = []
    for m in chat.messages(session_id):
        if m["role"] == "document":
            out.append({"role": "user", "content": f"(document, {len(m['content'])} "
                        f"characters) {m['content'][:200]}"})
        else:
            out.append({"role": "user" if m["role"] == "user" else "assistant",
                        "content": m["content"]})
    return out


def pipeline_choices(chat: ChatService) -> list[str]:
    presets = sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))
    saved = [p.name for p in chat.store.list_pipelines()]
    return presets + [s for s in saved if s not in presets]


def session_choices(chat: ChatService) -> list[tuple[str, int]]:
    return [(f"#{s['id']} {s['name']}", s["id"]) for s in chat.sessions()]


def sample_document() -> str:
    """The bundled sample document: the first HotpotQA sample's context."""
    from memfactory_core.data import load_episodes
    from memfactory_core.paths import ASSETS_DIR

    return load_episodes(ASSETS_DIR / "data" / "hotpotqa_sample.jsonl", limit=1)[0].context


def _status(chat: ChatService) -> str:
    models = chat.manager.status()
    if not models:
        return "No model loaded."
    return "Loaded: " + ", ".join(
        f"`{m['model']}` ({'busy' if m['busy'] else 'idle'})" for m in models)


def register(ctx: AppContext) -> None:
    """The Chat tab and its endpoints."""
    chat = ChatService(ctx.store)
    ctx.shared["chat"] = {"service": chat}
    remembered = gr.BrowserState(None, storage_key="memfactory-chat-session")
    with gr.Row():
        pipeline = gr.Dropdown(pipeline_choices(chat), value="memory_r1", label="Pipeline",
                               allow_custom_value=True, elem_id="chat-pipeline")
        backend = gr.Dropdown(model_backends(), value="transformers", label="Backend",
                              info="vllm is offered where it is installed (GPU)",
                              elem_id="chat-backend")
        model = gr.Textbox("tiny-random", label="Model (name, path, run:<id>, "
                           "openai:<model>@<url>)", elem_id="chat-model")
        new = gr.Button("New session", variant="primary", elem_id="chat-new")
        session = gr.Dropdown([], label="Session", elem_id="chat-session")
    with gr.Row():
        status = gr.Markdown("", elem_id="chat-status")
        models = gr.Markdown("No model loaded.", elem_id="chat-models")
        unload = gr.Button("Unload model", size="sm", elem_id="chat-unload")
    with gr.Row():
        with gr.Column(scale=1):
            bot = gr.Chatbot([], label="Chat", height=420, elem_id="chat-bot")
            message = gr.Textbox(label="Message", elem_id="chat-message", lines=1)
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                end = gr.Button("End session", elem_id="chat-end")
            with gr.Accordion("Document (MemAgent)", open=False):
                doc_source = gr.Dropdown(["paste", SAMPLE_DOCUMENT, WORKSPACE_DOCUMENT],
                                         value="paste", label="Source",
                                         elem_id="chat-doc-source")
                document = gr.Textbox(label="Document", lines=5, elem_id="chat-document")
                with gr.Row():
                    doc_file = gr.Dropdown(
                        workspace_documents(), label="Workspace file", allow_custom_value=True,
                        info=f"text files (.txt .md .json .jsonl, at most "
                             f"{MAX_DOCUMENT_BYTES // 1_000_000} MB) in "
                             + " or ".join(f"{memfactory_home() / d}/" for d in
                                           DOCUMENT_FOLDERS),
                        elem_id="chat-doc-file")
                    refresh_files = gr.Button("Refresh files", size="sm",
                                              elem_id="chat-doc-refresh")
                read = gr.Button("Read the document", elem_id="chat-read")
            with gr.Row():
                rewind_to = gr.Number(0, precision=0, label="Keep turns", elem_id="chat-keep")
                rewind = gr.Button("Rewind", elem_id="chat-rewind")
                export = gr.Button("Export JSON", elem_id="chat-export")
            exported = gr.File(label="Export", elem_id="chat-export-file")
        with gr.Column(scale=1):
            inspector = gr.HTML(inspector_html(None), elem_id="chat-inspector",
                                css_template=INSPECTOR_CSS)
            trace = gr.HTML(trace_html(None), elem_id="chat-trace", css_template=TRACE_CSS)

    def show(session_id: int | None) -> tuple[Any, ...]:
        last = chat.last_state(session_id) if session_id else None
        return (history(chat, session_id), inspector_html(last),
                trace_html({"steps": (last or {}).get("steps") or [],
                            "answer": None}) if last else trace_html(None), session_id)

    def on_load(saved: Any) -> tuple[Any, ...]:
        choices = session_choices(chat)
        ids = [c[1] for c in choices]
        sid = saved if saved in ids else (ids[0] if ids else None)
        return (gr.update(choices=choices, value=sid), *show(sid)[:3], _status(chat))

    def create(pipe: str, backend_name: str, model_name: str) -> tuple[Any, ...]:
        try:
            sid = chat.create_session(pipe, agent_model_name(backend_name, model_name))
        except MemFactoryError as err:
            return (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(),
                    f"**Error:** {err}", _status(chat))
        return (gr.update(choices=session_choices(chat), value=sid), *show(sid),
                f"Session #{sid} started.", _status(chat))

    def run(kind: str, session_id: int | None, text: str,
            source: str | None = None) -> Iterator[tuple[Any, ...]]:
        if not session_id:
            yield gr.update(), gr.update(), gr.update(), "**Error:** start a session first", \
                gr.update(), _status(chat)
            return
        shown = history(chat, session_id)
        try:
            if kind == "message":
                events = chat.send(session_id, text)
                shown.append({"role": "user", "content": text})
            elif kind == "document" and source is not None:
                events = chat.read_workspace_file(session_id, source)
                shown.append({"role": "user", "content": f"(document {source})"})
            elif kind == "document":
                events = chat.read_document(session_id, text)
                shown.append({"role": "user", "content": f"(document) {text[:200]}"})
            else:
                events = chat.end_session(session_id)
            shown.append({"role": "assistant", "content": ""})
            for ev in events:
                if ev.kind == "token":
                    shown[-1]["content"] += ev.text
                    yield shown, gr.update(), gr.update(), "Answering…", "", _status(chat)
                elif ev.kind == "progress":
                    shown[-1]["content"] = f"Reading… {ev.text}"
                    yield (shown, inspector_html({"memory": ev.data.get("memory"),
                                                  "memory_kind": "reading"}),
                           gr.update(), f"Reading {ev.text}", "", _status(chat))
                else:
                    final = show(session_id)
                    yield final[0], final[1], final[2], "", "", _status(chat)
        except MemFactoryError as err:
            final = show(session_id)
            yield final[0], final[1], final[2], f"**Error:** {err}", gr.update(), \
                _status(chat)

    outs = [bot, inspector, trace, status, message, models]

    def do_send(sid: int | None, text: str) -> Iterator[tuple[Any, ...]]:
        yield from run("message", sid, text)

    def do_end(sid: int | None) -> Iterator[tuple[Any, ...]]:
        yield from run("end_session", sid, "")

    def do_read(sid: int | None, source: str, text: str,
                file: str | None) -> Iterator[tuple[Any, ...]]:
        if source == WORKSPACE_DOCUMENT:
            yield from run("document", sid, "", file or "")
            return
        if source == SAMPLE_DOCUMENT:
            text = sample_document()
        yield from run("document", sid, text)

    def do_refresh_files(current: str | None) -> Any:
        files = workspace_documents()
        return gr.update(choices=files, value=current if current in files else
                         (files[0] if files else None))

    def do_rewind(sid: int | None, keep: float | None) -> tuple[Any, ...]:
        try:
            if not sid:
                raise MemFactoryError("start a session first")
            n = chat.rewind(sid, int(keep or 0))
            msg = f"Rewound: {n} message(s) removed."
        except MemFactoryError as err:
            msg = f"**Error:** {err}"
        return (*show(sid)[:3], msg)

    def do_export(sid: int | None) -> Any:
        if not sid:
            return None
        path = Path(tempfile.mkdtemp(prefix="mf-chat-")) / f"chat_session_{sid}.json"
        path.write_text(json.dumps(chat.export(sid), indent=1, default=str))
        return str(path)

    def do_unload(backend_name: str, name: str) -> tuple[str, str]:
        name = agent_model_name(backend_name, name)
        try:
            chat.manager.unload(name)
            return f"Unloaded `{name}`.", _status(chat)
        except MemFactoryError as err:
            return f"**Error:** {err}", _status(chat)

    new.click(create, [pipeline, backend, model],
              [session, bot, inspector, trace, remembered, status, models],
              api_visibility="private")
    session.change(show, [session], [bot, inspector, trace, remembered],
                   api_visibility="private")
    send.click(do_send, [session, message], outs, api_visibility="private")
    message.submit(do_send, [session, message], outs, api_visibility="private")
    end.click(do_end, [session], outs, api_visibility="private")
    read.click(do_read, [session, doc_source, document, doc_file], outs,
               api_visibility="private")
    refresh_files.click(do_refresh_files, [doc_file], [doc_file], api_visibility="private")
    rewind.click(do_rewind, [session, rewind_to], [bot, inspector, trace, status],
                 api_visibility="private")
    export.click(do_export, [session], [exported], api_visibility="private")
    unload.click(do_unload, [backend, model], [status, models], api_visibility="private")
    if ctx.demo is not None:
        ctx.demo.load(on_load, [remembered], [session, bot, inspector, trace, models],
                      api_visibility="private")
        ctx.demo.load(do_refresh_files, [doc_file], [doc_file], api_visibility="private")
    register_api(ctx, chat)


def register_api(ctx: AppContext, chat: ChatService) -> None:
    """Named endpoints over the chat service."""

    def _fail(err: Exception) -> gr.Error:
        return gr.Error(str(err))

    def chat_new_session(pipeline: str, model: str = "tiny-random") -> int:
        """Start a session with an agent; returns its id."""
        try:
            return chat.create_session(pipeline, model)
        except MemFactoryError as err:
            raise _fail(err) from None

    def chat_send(session_id: int, message: str) -> dict[str, Any]:
        """Send a message (or, for a document pipeline whose memory is empty, nothing else
        first); returns the reply and its trace."""
        try:
            done = [e for e in chat.send(int(session_id), message) if e.kind == "done"][-1]
        except MemFactoryError as err:
            raise _fail(err) from None
        return {"reply": done.text, **done.data}

    def chat_read_document(session_id: int, document: str) -> dict[str, Any]:
        """A document pipeline reads ``document``; returns the reply and its trace."""
        try:
            done = [e for e in chat.read_document(int(session_id), document)
                    if e.kind == "done"][-1]
        except MemFactoryError as err:
            raise _fail(err) from None
        return {"reply": done.text, **done.data}

    def chat_workspace_files() -> list[str]:
        """The workspace's text files a document pipeline can read (paths relative to the
        workspace)."""
        return workspace_documents()

    def chat_read_workspace_file(session_id: int, path: str) -> dict[str, Any]:
        """A document pipeline reads the workspace file ``path`` (relative to the
        workspace); returns the reply and its trace."""
        try:
            done = [e for e in chat.read_workspace_file(int(session_id), path)
                    if e.kind == "done"][-1]
        except MemFactoryError as err:
            raise _fail(err) from None
        return {"reply": done.text, **done.data}

    def chat_model_backends() -> list[str]:
        """The local backends a chat model can load with (vllm only where installed)."""
        return model_backends()

    def chat_messages(session_id: int) -> list[dict[str, Any]]:
        """The session's stored messages with their traces."""
        try:
            return chat.messages(int(session_id))
        except MemFactoryError as err:
            raise _fail(err) from None

    def chat_rewind(session_id: int, turns: int) -> int:
        """Keep the first ``turns`` turns; returns how many messages were removed."""
        try:
            return chat.rewind(int(session_id), int(turns))
        except MemFactoryError as err:
            raise _fail(err) from None

    def chat_export(session_id: int) -> dict[str, Any]:
        """The whole session as JSON."""
        try:
            return chat.export(int(session_id))
        except MemFactoryError as err:
            raise _fail(err) from None

    for fn in (chat_new_session, chat_send, chat_read_document, chat_workspace_files,
               chat_read_workspace_file, chat_model_backends, chat_messages, chat_rewind,
               chat_export):
        ctx.api(fn)
