"""The trace viewer: a rollout's steps (component, role, prompt, output, memory before and
after as a word-level diff or a bank's recorded changes, tokens, seconds) as HTML.

:func:`trace_html` is a pure function (no Gradio) usable by any page or report;
:func:`trace_viewer` is the small Gradio wrapper the Build, Runs, Compare and Chat pages put
on a page.
"""

from __future__ import annotations

import difflib
import html
import json
import re
from typing import Any

_WORDS = re.compile(r"\s+|[^\s]+")
MAX_CHARS = 4000
"""Longest prompt or output shown in full; longer ones are cut in the middle."""

CSS = """
.mf-trace { font-size: 13px; }
.mf-trace .mf-step { border: 1px solid var(--border-color-primary, #ddd); border-radius: 6px;
  margin: 6px 0; padding: 4px 8px; }
.mf-trace summary { cursor: pointer; }
.mf-trace pre { white-space: pre-wrap; word-break: break-word; margin: 2px 0 6px;
  max-height: 320px; overflow: auto; font-size: 12px; }
.mf-trace ins { background: #c8f7c5; color: #064; text-decoration: none; }
.mf-trace del { background: #f9c9c9; color: #800; }
.mf-trace .mf-meta { color: var(--body-text-color-subdued, #666); }
"""


def as_text(value: Any) -> str:
    """A prompt, output or memory as text (structured values as indented JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True, default=str)
    except TypeError:
        return str(value)


def _cut(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


def word_diff_html(before: Any, after: Any) -> str:
    """``after`` with the words removed since ``before`` in ``<del>`` and the added ones in
    ``<ins>``; escaped HTML."""
    old, new = _WORDS.findall(as_text(before)), _WORDS.findall(as_text(after))
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new,
                                                      autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape("".join(new[j1:j2])))
            continue
        if op in ("delete", "replace"):
            out.append(f"<del>{html.escape(''.join(old[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{html.escape(''.join(new[j1:j2]))}</ins>")
    return "".join(out)


def memory_diff_html(diff: Any) -> str:
    """A memory's recorded changes as escaped HTML: a bank's ``added`` entries in
    ``<ins>``, ``deleted`` ones in ``<del>``, ``updated`` ones as a word diff; any other
    shape as JSON."""
    if not isinstance(diff, dict) or not set(diff) <= {"added", "updated", "deleted"}:
        return html.escape(as_text(diff))
    lines = []
    for entry in diff.get("added") or []:
        lines.append(f"<ins>+ {html.escape(str(entry.get('id')))}: "
                     f"{html.escape(as_text(entry.get('text')))}</ins>")
    for entry in diff.get("updated") or []:
        lines.append(f"~ {html.escape(str(entry.get('id')))}: "
                     f"{word_diff_html(entry.get('before'), entry.get('after'))}")
    for entry in diff.get("deleted") or []:
        lines.append(f"<del>- {html.escape(str(entry.get('id')))}: "
                     f"{html.escape(as_text(entry.get('text')))}</del>")
    return "\n".join(lines)


def _pre(label: str, text: str, cls: str) -> str:
    return (f"<div class='{cls}'><b>{label}</b><pre>{html.escape(_cut(text))}</pre></div>"
            if text else "")


def step_html(index: int, step: dict[str, Any]) -> str:
    """One step of a trace as a collapsible block."""
    lane, slot = step.get("lane"), step.get("slot")
    role = f" · role <b>{html.escape(str(step['role']))}</b>" if step.get("role") else ""
    unit = f" · unit {step['unit']}" if step.get("unit") is not None else ""
    tokens = ""
    if step.get("prompt_tokens") or step.get("completion_tokens"):
        tokens = (f" · {step.get('prompt_tokens', 0)} → {step.get('completion_tokens', 0)}"
                  " tokens")
    seconds = f" · {float(step.get('seconds') or 0):.2f} s"
    batch = int(step.get("batch_size") or 1)
    if batch > 1:
        seconds += f" (batch of {batch})"
    head = (f"#{index} <code>{html.escape(str(lane))}[{slot}]</code> "
            f"<b>{html.escape(str(step.get('component')))}</b>{role}{unit}"
            f"<span class='mf-meta'>{tokens}{seconds}</span>")
    before, after = step.get("memory_before"), step.get("memory_after")
    parts = [_pre("prompt", as_text(step.get("prompt")), "mf-prompt"),
             _pre("output", as_text(step.get("output")), "mf-output")]
    if after is not None and after != before:
        parts.append("<div class='mf-memory'><b>memory (before → after)</b><pre>"
                     f"{word_diff_html(before, after)}</pre></div>")
    elif after is not None:
        parts.append("<div class='mf-memory mf-meta'>memory unchanged</div>")
    if step.get("memory_diff"):
        parts.append("<div class='mf-memory'><b>memory changes</b><pre>"
                     f"{memory_diff_html(step['memory_diff'])}</pre></div>")
    extra = {k: v for k, v in (step.get("extra") or {}).items() if v is not None}
    if extra:
        parts.append(_pre("details", as_text(extra), "mf-extra"))
    return (f"<details class='mf-step' data-lane='{html.escape(str(lane))}' "
            f"data-slot='{slot}' open><summary>{head}</summary>{''.join(parts)}</details>")


def trace_html(trace: dict[str, Any] | None, record: dict[str, Any] | None = None,
               title: str | None = None) -> str:
    """A whole trace (``Trace.model_dump()``) as HTML; ``record`` (an evaluation record)
    adds the question, the expected answers, the prediction and its scores."""
    if not trace:
        return "<div class='mf-trace mf-meta'>No trace yet.</div>"
    steps = trace.get("steps") or []
    head = [f"<h4>{html.escape(title)}</h4>"] if title else []
    if record:
        answers = ", ".join(map(str, record.get("answers") or []))
        scores = " · ".join(f"{k} {float(record[k]):.2f}" for k in ("em", "sub_em", "f1")
                            if isinstance(record.get(k), int | float))
        head.append(f"<p><b>question</b> {html.escape(str(record.get('question', '')))}<br>"
                    f"<b>expected</b> {html.escape(answers)}<br>"
                    f"<b>prediction</b> {html.escape(str(record.get('prediction', '')))}"
                    + (f"<br><span class='mf-meta'>{scores}</span>" if scores else "")
                    + "</p>")
    total = sum(float(s.get("seconds") or 0) for s in steps)
    tokens = sum(int(s.get("completion_tokens") or 0) for s in steps)
    head.append(f"<p class='mf-meta'>{len(steps)} steps · {tokens} generated tokens · "
                f"{total:.2f} s · answer: <b>{html.escape(str(trace.get('answer')))}</b></p>")
    body = "".join(step_html(i, s) for i, s in enumerate(steps))
    ingest = (record or {}).get("ingest_steps") or []
    if ingest:
        shared = "".join(step_html(i, s) for i, s in enumerate(ingest))
        body = (f"<h5>Ingest ({len(ingest)} steps, shared by the questions of this "
                f"conversation)</h5>{shared}<h5>Question</h5>{body}")
    return f"<div class='mf-trace'>{''.join(head)}{body}</div>"


def trace_viewer(elem_id: str | None = None, label: str = "Trace") -> Any:
    """A Gradio component showing :func:`trace_html` output (give it that function's
    HTML as its value)."""
    import gradio as gr

    return gr.HTML(trace_html(None), label=label, elem_id=elem_id, css_template=CSS,
                   js_on_load=None)
