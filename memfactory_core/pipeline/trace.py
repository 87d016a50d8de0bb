"""Traces: what each step of a rollout did, for evaluation records, training and the UI."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class TraceStep(BaseModel):
    """One component applied to one rollout.

    ``seconds`` is the wall time of the batched call this step was part of, shared by
    ``batch_size`` rollouts.
    """

    lane: str
    slot: int
    component: str
    role: str | None = None
    unit: int | None = None
    prompt: Any = None
    output: Any = None
    #: whole memory before and after the step (small memories such as text)
    memory_before: Any = None
    memory_after: Any = None
    #: what the step changed in a larger memory (a bank: added / updated / deleted entries)
    memory_diff: Any = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    batch_size: int = 1
    extra: dict[str, Any] = Field(default_factory=dict)


class Trace(BaseModel):
    """All steps of one rollout, in order, and its final answer."""

    rollout_id: str
    episode_id: str
    question_id: str
    sample: int = 0
    steps: list[TraceStep] = Field(default_factory=list)
    answer: str | None = None
    #: set when the ingest steps are shared with other questions and recorded once, under
    #: this id, rather than in ``steps``
    ingest_id: str | None = None
    final_memory: Any = None

    def steps_of(self, component: str) -> list[TraceStep]:
        return [s for s in self.steps if s.component == component]

    def render(self, max_chars: int = 400) -> str:
        """A readable multi-line rendering (used by ``memfactory run``)."""

        def cut(x: Any) -> str:
            text = x if isinstance(x, str) else str(x)
            text = text.strip()
            return text if len(text) <= max_chars else text[: max_chars - 3] + "..."

        lines = [f"rollout {self.rollout_id} (episode {self.episode_id})"]
        for i, s in enumerate(self.steps):
            unit = f" unit {s.unit}" if s.unit is not None else ""
            role = f" [{s.role}]" if s.role else ""
            head = f"#{i} {s.lane}[{s.slot}] {s.component}{role}{unit}"
            tokens = f" {s.prompt_tokens}->{s.completion_tokens} tok" if s.completion_tokens else ""
            lines.append(f"{head}  ({s.seconds:.2f}s{tokens})")
            if s.output is not None:
                lines.append("    output: " + cut(s.output).replace("\n", "\n            "))
            if s.memory_after is not None and s.memory_after != s.memory_before:
                lines.append("    memory: " + cut(s.memory_after).replace("\n", "\n            "))
            if s.memory_diff:
                lines.append("    memory: " + cut(s.memory_diff))
        lines.append(f"answer: {self.answer!r}")
        return "\n".join(lines)
