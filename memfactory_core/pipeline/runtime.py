"""Runs a pipeline over many episodes at once, batched step by step.

Unit ``i`` of every rollout that has one (a chunk of a document, a turn or a session of a
conversation) goes through each ingest slot together, so an LLM component makes one
``generate`` call per unit index, not one per rollout. The query lane then runs once per
question, batched across rollouts as well.

When ingestion does not read the question, one rollout serves every question of its episode:
its ingest steps are recorded once (``RolloutResult.ingest``, shared by the questions' results)
and each question's trace holds only its query steps. Steps that touch memory record what
changed (``memory_diff``); small memories (text) also keep their whole state before and after.

The steps of a rollout (``segment``, ``ingest_unit``, ``run_query``) are public so that a live
session (:mod:`memfactory_core.pipeline.live`, made by :meth:`PipelineRuntime.live`) drives a
chat through the same code as an evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from memfactory_core.components.base import (
    EPISODE_PORTS,
    Component,
    ComponentContext,
    Port,
    RolloutState,
    Segmenter,
)
from memfactory_core.data.episode import QA, Episode
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import LLMBackend, SamplingParams, TextTokenizer
from memfactory_core.memory import (
    Memory,
    MemoryBank,
    MemoryBuildContext,
    TextMemory,
    create_memory,
)
from memfactory_core.pipeline.spec import ResolvedPipeline, ResolvedSlot
from memfactory_core.pipeline.trace import Trace, TraceStep
from memfactory_core.resources import Resources

if TYPE_CHECKING:
    from memfactory_core.pipeline.live import LiveSession


class Progress(Protocol):
    """Receives progress as units and questions are processed."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int) -> None: ...


@dataclass
class RolloutResult:
    """One question answered by one rollout."""

    episode: Episode
    qa: QA
    sample: int
    answer: str | None
    trace: Trace
    #: LLM turns of this rollout (prompt and generation with token ids), in order; when the
    #: ingest is shared by several questions, only this question's query turns
    turns: list[dict[str, Any]] = field(default_factory=list)
    #: ingest steps shared with the episode's other questions (the same list object for all
    #: of them); empty when the trace holds its own ingest steps (question-conditioned)
    ingest: list[TraceStep] = field(default_factory=list)
    #: LLM turns of the shared ingest (the same list object for every question)
    ingest_turns: list[dict[str, Any]] = field(default_factory=list)
    #: the rollout's memory after ingestion and this question's query lane
    memory: Memory | None = None

    @property
    def steps(self) -> list[TraceStep]:
        """Every step that led to this answer: the shared ingest, then the trace's own."""
        return [*self.ingest, *self.trace.steps]

    def full_trace(self) -> Trace:
        """The trace with the shared ingest steps put back in front (for display)."""
        if not self.ingest:
            return self.trace
        return self.trace.model_copy(update={"steps": self.steps})

    @property
    def boxed(self) -> bool:
        """Whether the final answering step reported a ``\\boxed{}`` answer."""
        steps = [s for s in self.trace.steps if s.lane == "query"]
        return bool(steps and steps[-1].extra.get("boxed"))


@dataclass
class _Rollout:
    id: str
    episode: Episode
    questions: list[QA]
    sample: int
    state: RolloutState
    units: list[Any] = field(default_factory=list)
    steps: list[TraceStep] = field(default_factory=list)


class PipelineRuntime:
    """Executes a validated pipeline with LLM backends bound to its roles."""

    def __init__(
        self,
        pipeline: ResolvedPipeline,
        llms: LLMBackend | dict[str, LLMBackend],
        sampling: SamplingParams | dict[str, SamplingParams] | None = None,
        tokenizer: TextTokenizer | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.resources = resources or Resources()
        roles = pipeline.roles
        if isinstance(llms, LLMBackend):
            llms = {role: llms for role in roles}
        missing = [r for r in roles if r not in llms]
        if missing:
            raise MemFactoryError(
                f"no model bound to role(s) {missing} of pipeline {pipeline.spec.name!r}"
            )
        self.llms = llms
        if tokenizer is None:
            if not llms:
                raise MemFactoryError("a pipeline without LLM components needs a tokenizer")
            first = llms.get("policy") or next(iter(llms.values()))
            tokenizer = first.tokenizer
        self.tokenizer = tokenizer
        sampling = sampling or SamplingParams()

        def sampling_for(role: str | None) -> SamplingParams:
            if isinstance(sampling, SamplingParams):
                return sampling
            return sampling.get(role or "", SamplingParams())

        def build(slot: ResolvedSlot) -> Component:
            llm = llms.get(slot.role) if slot.role else None
            ctx = ComponentContext(llm=llm, tokenizer=tokenizer, sampling=sampling_for(slot.role),
                                   resources=self.resources)
            return slot.cls(slot.params, ctx, slot.role)

        self._ingest = [(slot, build(slot)) for slot in pipeline.ingest]
        self._query = [(slot, build(slot)) for slot in pipeline.query]
        segmenter = self._ingest[0][1]
        assert isinstance(segmenter, Segmenter)
        self._segmenter = segmenter
        self._unit_port = segmenter.outputs[0] if segmenter.outputs else Port.CHUNK
        self._memory_context = MemoryBuildContext(tokenizer, self.resources)

    def new_memory(self) -> Memory:
        """An empty memory of the pipeline's kind, with its parameters."""
        return create_memory(self.pipeline.spec.memory.type, self.pipeline.memory_params,
                             self._memory_context)

    def run(
        self,
        episodes: Sequence[Episode],
        samples: int = 1,
        progress: Progress | None = None,
    ) -> list[RolloutResult]:
        """Run every episode ``samples`` times; one result per (question, sample)."""
        rollouts = self._make_rollouts(episodes, samples)
        for r in rollouts:
            r.units, step = self.segment(r.state, source=f"episode {r.episode.id!r}")
            r.steps.append(step)
        n_questions = sum(len(r.questions) for r in rollouts)
        if progress is not None:
            progress.start(sum(len(r.units) for r in rollouts) + n_questions)
        for u in range(max((len(r.units) for r in rollouts), default=0)):
            active = [r for r in rollouts if u < len(r.units)]
            self.ingest_unit([(r.state, r.steps, r.units[u]) for r in active], u)
            if progress is not None:
                progress.advance(len(active))
        return self._answer(rollouts, progress)

    # -- the steps of a rollout, shared by run() and live sessions ---------------------

    def component(self, lane: str, index: int) -> Component:
        """The component built for slot ``index`` of ``lane`` ("ingest" or "query")."""
        slots = {"ingest": self._ingest, "query": self._query}.get(lane)
        if slots is None or not 0 <= index < len(slots):
            raise MemFactoryError(f"the pipeline has no {lane} slot {index}")
        return slots[index][1]

    @property
    def segmenter(self) -> Segmenter:
        """The ingest lane's first slot, which splits a rollout's context into units."""
        return self._segmenter

    def segment(self, state: RolloutState, source: str | None = None
                ) -> tuple[list[Any], TraceStep]:
        """Split ``state``'s document or conversation into units with the segmenter; the
        episode values are then dropped from ``state``. ``source`` names the rollout in
        errors (default: its id)."""
        t0 = time.perf_counter()
        for port in self._segmenter.inputs:
            if port in EPISODE_PORTS and state.values.get(port) is None:
                raise MemFactoryError(
                    f"{source or f'rollout {state.id!r}'} has no {port}, but the pipeline's "
                    f"segmenter {self._segmenter.name!r} reads one"
                )
        units, res = self._segmenter.segment(state)
        for port in EPISODE_PORTS:
            state.values.pop(port, None)
        step = TraceStep(lane="ingest", slot=0, component=self._segmenter.name,
                         output=res.output, seconds=time.perf_counter() - t0, extra=res.extra)
        return units, step

    def ingest_unit(self, batch: Sequence[tuple[RolloutState, list[TraceStep], Any]],
                    index: int) -> None:
        """Unit number ``index`` of each rollout in ``batch`` (its state, the step list its
        trace grows and the unit) through the ingest slots after the segmenter, batched."""
        for state, _, unit in batch:
            state.values[self._unit_port] = unit
        for slot, comp in self._ingest[1:]:
            self.run_slot(slot, comp, [(state, steps) for state, steps, _ in batch],
                           unit=index)

    def run_query(self, batch: Sequence[tuple[RolloutState, list[TraceStep]]],
                  after_slot: Callable[[ResolvedSlot, Component], None] | None = None
                  ) -> None:
        """The query lane for each rollout in ``batch`` (its state holds the question),
        batched; ``after_slot`` is called after each slot (to look at its outputs)."""
        for slot, comp in self._query:
            self.run_slot(slot, comp, list(batch), unit=None)
            if after_slot is not None:
                after_slot(slot, comp)

    def restore_memory(self, snapshot: Any) -> Memory:
        """The pipeline's memory in the state ``snapshot`` recorded (empty for ``None``)."""
        memory = self.new_memory()
        if snapshot is None:
            return memory
        if isinstance(memory, MemoryBank):
            return type(memory).from_snapshot(snapshot, memory.index.embedder)
        if isinstance(memory, TextMemory):
            memory.content = str(snapshot)
            return memory
        raise MemFactoryError(f"cannot restore a {type(memory).__name__} memory")

    def live(self, checkpoint: dict[str, Any] | None = None) -> LiveSession:
        """A session driven one call at a time (read a document, add turns, ask, end a
        conversation session), resumed from ``checkpoint`` (``LiveSession.checkpoint()``)."""
        from memfactory_core.pipeline.live import LiveSession

        return LiveSession.resume(self, checkpoint)

    def _make_rollouts(self, episodes: Sequence[Episode], samples: int) -> list[_Rollout]:
        per_question = self.pipeline.question_conditioned
        rollouts: list[_Rollout] = []
        for ep in episodes:
            groups = [[qa] for qa in ep.questions] if per_question else [ep.questions]
            for qas in groups:
                for k in range(samples):
                    rid = f"{ep.id}/{qas[0].id}" if per_question else ep.id
                    rid = f"{rid}#{k}" if samples > 1 else rid
                    values: dict[str, Any] = {Port.DOCUMENT: ep.context}
                    if ep.conversation is not None:
                        values[Port.CONVERSATION] = ep.conversation
                    if per_question:
                        values[Port.QUESTION] = qas[0].question
                    state = RolloutState(id=rid, values=values, memory=self.new_memory())
                    rollouts.append(_Rollout(rid, ep, qas, k, state))
        return rollouts

    def _answer(self, rollouts: list[_Rollout], progress: Progress | None) -> list[RolloutResult]:
        shared = not self.pipeline.question_conditioned
        jobs: list[tuple[_Rollout, QA, RolloutState, list[TraceStep]]] = []
        for r in rollouts:
            for qa in r.questions:
                if not shared:
                    state, steps = r.state, r.steps
                else:
                    rid = r.id if len(r.questions) == 1 else f"{r.id}/{qa.id}"
                    state = RolloutState(id=rid, values=dict(r.state.values),
                                         memory=r.state.memory)
                    steps = []
                state.values[Port.QUESTION] = qa.question
                jobs.append((r, qa, state, steps))
        self.run_query([(s, steps) for _, _, s, steps in jobs])
        if progress is not None:
            progress.advance(len(jobs))
        results = []
        for r, qa, state, steps in jobs:
            answer = state.values.get(Port.ANSWER)
            trace = Trace(rollout_id=state.id, episode_id=r.episode.id, question_id=qa.id,
                          sample=r.sample, steps=steps, answer=answer,
                          ingest_id=r.id if shared else None,
                          final_memory=state.memory.snapshot()
                          if state.memory.trace_full_state else None)
            results.append(RolloutResult(
                r.episode, qa, r.sample, answer, trace, state.turns,
                ingest=r.steps if shared else [],
                ingest_turns=r.state.turns if shared else [],
                memory=state.memory,
            ))
        return results

    @staticmethod
    def run_slot(
        slot: ResolvedSlot,
        comp: Component,
        batch: list[tuple[RolloutState, list[TraceStep]]],
        unit: int | None,
    ) -> None:
        """One slot's component on each rollout of ``batch`` at once; each rollout's step
        list gains the step with its timing and memory change."""
        if not batch:
            return
        states = [s for s, _ in batch]
        touches_memory = comp.memory is not None
        marks = [s.memory.mark() for s in states] if touches_memory else None
        t0 = time.perf_counter()
        results = comp.run(states)
        seconds = time.perf_counter() - t0
        for i, ((state, steps), res) in enumerate(zip(batch, results, strict=True)):
            diff = state.memory.diff(marks[i]) if marks is not None else None
            full = touches_memory and state.memory.trace_full_state
            steps.append(
                TraceStep(
                    lane=slot.lane,
                    slot=slot.index,
                    component=comp.name,
                    role=slot.role,
                    unit=unit,
                    prompt=res.prompt,
                    output=res.output,
                    memory_before=(diff["before"] if diff else state.memory.snapshot())
                    if full else None,
                    memory_after=state.memory.snapshot() if full else None,
                    memory_diff=diff if not full else None,
                    prompt_tokens=res.prompt_tokens,
                    completion_tokens=res.completion_tokens,
                    seconds=seconds,
                    batch_size=len(states),
                    extra=res.extra,
                )
            )
