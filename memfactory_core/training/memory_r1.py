"""Memory-R1's one-step policies, trained by the GRPO trainer.

Memory-R1 (Yan et al., 2025) trains its memory manager and its answer agent on single
decisions rather than on whole conversations:

- **memory manager**: a sample is (the new facts of the turn a question's evidence points to,
  the bank built from the earlier turns, that question). The manager's reply edits a copy of
  that bank; a frozen answerer (the base model with the adapter off, another model under
  ``roles``, or an OpenAI-compatible endpoint) then answers the question from the edited copy,
  and the reward components (``em``, ``f1``, ``malformed_ops``, ...) score that answer and the
  reply. With several evidence turns, the last one (in conversation order) that has facts is
  the new turn, so the earlier evidence is already in the bank.
- **answer agent**: a sample is (the bank of the whole conversation read, a question); the
  reward scores its own answer.

A trajectory is therefore one turn of the trained role (or one per fact, when the evidence turn
has several facts), and the trainer's group advantages, loss, checkpoints, resume and
callbacks apply unchanged: :class:`MemoryR1Trainer` only replaces where rollouts come from.

The banks come from the pipeline's own ingest lane, run once per conversation by frozen models:
the segmenter and extractor slots give each unit's facts, and the bank is written either by
adding every fact (``bank: add_all``) or by the pipeline's memory manager on the base model
(``bank: manager``). What is expensive (the facts and the ops applied, unit by unit) is cached
as JSON under ``cache_dir``, keyed by a hash of the conversation, the ingest slots, the builder
and the frozen models; a later run replays the ops on an empty bank (only embedding the
entries) and keeps a copy of the bank at each unit a sample starts from.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from memfactory_core.components.base import Component, ComponentContext, Port, RolloutState
from memfactory_core.components.memory_manager import MemoryManager
from memfactory_core.data.episode import Episode
from memfactory_core.errors import MemFactoryError, Problem, ValidationError
from memfactory_core.eval.config import DataConfig, ModelConfig
from memfactory_core.eval.runner import default_loader
from memfactory_core.llm.base import LLMBackend, SamplingParams, TextTokenizer
from memfactory_core.memory.bank import BankOp, Fact, MemoryBank, OpKind
from memfactory_core.memory.base import Memory
from memfactory_core.paths import memfactory_home
from memfactory_core.pipeline.runtime import PipelineRuntime, RolloutResult
from memfactory_core.pipeline.spec import ResolvedPipeline, ResolvedSlot
from memfactory_core.pipeline.trace import Trace, TraceStep
from memfactory_core.resources import Resources
from memfactory_core.training.callbacks import TrainingCallback
from memfactory_core.training.config import TrainConfig
from memfactory_core.training.memory_r1_config import MemoryR1Options
from memfactory_core.training.rewards import compute_rewards
from memfactory_core.training.trainer import GRPOTrainer

#: the turn id under which the bank after the whole conversation is kept
END = "<end>"
CACHE_VERSION = 1


@dataclass
class BankPoint:
    """A conversation's bank at one point, and the facts a sample starting there decides on
    (the evidence turn's facts, not yet in the bank; none at the end)."""

    bank: MemoryBank
    facts: list[Fact]


@dataclass(frozen=True)
class IngestPlan:
    """The slots of a bank pipeline's ingest lane, by what they do."""

    segmenter: ResolvedSlot
    extract: list[ResolvedSlot]
    writer: ResolvedSlot


def ingest_plan(pipeline: ResolvedPipeline) -> IngestPlan:
    """Split the ingest lane into segmenter, fact slots and the slot that writes the bank."""
    if str(pipeline.spec.memory.type) != "bank":
        raise MemFactoryError(f"Memory-R1 training needs a bank pipeline; "
                              f"{pipeline.spec.name!r} keeps a {pipeline.spec.memory.type} memory")
    writers = [i for i, s in enumerate(pipeline.ingest) if i > 0 and s.cls.memory is not None]
    if not writers:
        raise MemFactoryError(f"pipeline {pipeline.spec.name!r} has no ingest slot that writes "
                              "the bank")
    w = writers[0]
    if w != len(pipeline.ingest) - 1:
        raise MemFactoryError(
            f"Memory-R1 training expects the bank writer ({pipeline.ingest[w].location}) to be "
            "the last ingest slot")
    return IngestPlan(pipeline.ingest[0], list(pipeline.ingest[1:w]), pipeline.ingest[w])


def build_component(slot: ResolvedSlot, llms: dict[str, LLMBackend], sampling: SamplingParams,
                    tokenizer: TextTokenizer, resources: Resources) -> Component:
    """A slot's component bound to its role's backend, as the runtime builds it."""
    llm = llms.get(slot.role) if slot.role else None
    ctx = ComponentContext(llm=llm, tokenizer=tokenizer, sampling=sampling, resources=resources)
    return slot.cls(slot.params, ctx, slot.role)


def replay_ops(bank: MemoryBank, fact: Fact, ops: Sequence[dict[str, Any]]) -> None:
    """Apply recorded ops (as ``MemoryBank.apply`` reports them) for ``fact`` again."""
    for op in ops:
        kind = op.get("op")
        if kind == "ADD":
            entry = bank.add(op["text"], fact.speaker, fact.turn_ids, fact.time)
            if entry.id != op.get("id"):
                raise MemFactoryError(f"cached bank out of step: ADD made {entry.id}, the "
                                      f"cache says {op.get('id')}")
        elif kind == "UPDATE":
            bank.update(op["id"], op["after"], fact.turn_ids, fact.time)
        elif kind == "DELETE":
            bank.delete(op["id"], fact.time)
        elif kind != "NOOP":
            raise MemFactoryError(f"cached bank holds an unknown op {kind!r}")


class BankBuilder:
    """Builds conversation banks with a pipeline's ingest lane on frozen models (see the module
    docstring) and caches the facts and ops of each unit."""

    def __init__(self, pipeline: ResolvedPipeline, llms: dict[str, LLMBackend],
                 sampling: SamplingParams, tokenizer: TextTokenizer, resources: Resources,
                 new_memory: Callable[[], Memory], mode: str, cache_dir: Path) -> None:
        self.plan = ingest_plan(pipeline)
        self.mode = mode
        self.cache_dir = cache_dir
        self.new_memory = new_memory
        if mode == "manager" and not issubclass(self.plan.writer.cls, MemoryManager):
            raise MemFactoryError(
                f"bank: manager needs a memory_manager slot; pipeline {pipeline.spec.name!r} "
                f"writes with {self.plan.writer.cls.name}")
        slots = [self.plan.segmenter, *self.plan.extract]
        if mode == "manager":
            slots.append(self.plan.writer)
        self.components = [build_component(s, llms, sampling, tokenizer, resources)
                           for s in slots]
        used = sorted({s.role for s in slots if s.role})
        self.identity = {
            "version": CACHE_VERSION, "mode": mode,
            "memory": pipeline.memory_params.model_dump(mode="json"),
            "slots": [[s.cls.name, s.role, s.params.model_dump(mode="json")] for s in slots],
            "models": {r: llms[r].model_name for r in used if r in llms},
            "sampling": [sampling.temperature, sampling.top_p, sampling.top_k,
                         sampling.repetition_penalty] if used else None,
        }
        self.last_cache: dict[str, str] = {}

    def cache_file(self, episode: Episode) -> Path:
        assert episode.conversation is not None
        key = hashlib.sha256(json.dumps(
            {**self.identity, "conversation": episode.conversation.model_dump(mode="json")},
            sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()[:20]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in episode.id)
        return self.cache_dir / f"{safe}-{self.mode}-{key}.json"

    def records(self, episode: Episode) -> list[dict[str, Any]]:
        """Per unit: its turn ids, facts and the ops applied for each fact (cached)."""
        file = self.cache_file(episode)
        if file.is_file():
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
                if isinstance(data, dict) and isinstance(data.get("units"), list):
                    self.last_cache[episode.id] = f"{file} (reused)"
                    return data["units"]
            except (OSError, json.JSONDecodeError):
                pass  # unreadable cache: rebuilt below and written again
        t0 = time.perf_counter()
        units = self._build(episode)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"conversation": episode.id, "units": units},
                                  ensure_ascii=False), encoding="utf-8")
        tmp.replace(file)
        self.last_cache[episode.id] = f"{file} (built in {time.perf_counter() - t0:.1f} s)"
        return units

    def _build(self, episode: Episode) -> list[dict[str, Any]]:
        segmenter, *rest = self.components
        extract = rest[: len(self.plan.extract)]
        manager = rest[len(self.plan.extract):]
        bank = self.new_memory()
        assert isinstance(bank, MemoryBank)
        state = RolloutState(id=episode.id, values={Port.DOCUMENT: episode.context,
                                                    Port.CONVERSATION: episode.conversation},
                             memory=bank)
        units, _ = segmenter.segment(state)  # type: ignore[attr-defined]
        port = segmenter.outputs[0]
        state.values.pop(Port.DOCUMENT, None)
        state.values.pop(Port.CONVERSATION, None)
        out = []
        for unit in units:
            state.values[port] = unit
            state.values.pop(Port.FACTS, None)
            for comp in extract:
                comp.run([state])
            facts: list[Fact] = list(state.values.get(Port.FACTS, []))
            if manager:
                decisions = manager[0].run([state])[0].output
                ops = [d["ops"] for d in decisions]
            else:
                ops = [bank.apply([BankOp(op=OpKind.ADD, text=f.text)], f.speaker, f.turn_ids,
                                  f.time) for f in facts]
            state.turns.clear()
            out.append({"turn_ids": [t.id for t in unit] if isinstance(unit, list) else [],
                        "facts": [f.model_dump(mode="json") for f in facts],
                        "ops": ops})
        return out

    def points(self, episode: Episode, starts: set[str]) -> dict[str, BankPoint]:
        """The bank before each turn in ``starts`` (with that turn's facts) and at the end."""
        bank = self.new_memory()
        assert isinstance(bank, MemoryBank)
        found: dict[str, BankPoint] = {}
        for unit in self.records(episode):
            facts = [Fact.model_validate(f) for f in unit["facts"]]
            for tid in unit["turn_ids"]:
                if tid in starts:
                    bank.index.flush()
                    found[tid] = BankPoint(bank.clone(),
                                           [f for f in facts if tid in f.turn_ids])
            for fact, ops in zip(facts, unit["ops"], strict=True):
                replay_ops(bank, fact, ops)
        bank.index.flush()
        found[END] = BankPoint(bank, [])
        return found


def policy_kind(pipeline: ResolvedPipeline, roles: Sequence[str]) -> str:
    """``manager`` or ``answer``: which one-step policy the trained role is."""
    if len(roles) != 1:
        raise ValidationError("invalid TrainConfig", [Problem(
            "trained_roles", "Memory-R1 training trains one role at a time (the memory "
            f"manager's or the answer agent's), not {list(roles)}")])
    role = roles[0]
    plan = ingest_plan(pipeline)
    if plan.writer.role == role and issubclass(plan.writer.cls, MemoryManager):
        if any(s.role == role for s in [plan.segmenter, *plan.extract, *pipeline.query]):
            raise ValidationError("invalid TrainConfig", [Problem(
                "trained_roles", f"role {role!r} is used by other slots than the memory "
                "manager; give the manager a role of its own")])
        return "manager"
    last = pipeline.query[-1] if pipeline.query else None
    if last is not None and last.role == role and Port.ANSWER in last.cls.outputs and not any(
            s.role == role for s in [*pipeline.ingest, *pipeline.query[:-1]]):
        return "answer"
    raise ValidationError("invalid TrainConfig", [Problem(
        "trained_roles", f"role {role!r} is neither the memory manager's nor only the answering "
        f"slot's in pipeline {pipeline.spec.name!r}")])


def one_step_samples(conversations: Sequence[Episode], kind: str
                     ) -> tuple[list[Episode], dict[str, set[str]], int]:
    """One episode per usable question (its id the question's; ``meta`` names the conversation
    and, for the manager, the question's evidence turns in conversation order), the turns
    whose banks are needed per conversation, and how many questions had no evidence turn in
    the turns read (manager samples only)."""
    items: list[Episode] = []
    starts: dict[str, set[str]] = {}
    skipped = 0
    for ep in conversations:
        if ep.conversation is None:
            raise MemFactoryError(f"episode {ep.id!r} has no conversation: Memory-R1 training "
                                  "reads conversation data (LoCoMo, LongMemEval)")
        order = {t.id: i for i, t in enumerate(ep.conversation.turns())}
        starts.setdefault(ep.id, set())
        for qa in ep.questions:
            meta: dict[str, Any] = {"conversation": ep.id}
            if kind == "answer":
                meta["turn"] = END
            else:
                evidence = sorted({e for e in qa.evidence if e in order}, key=order.__getitem__)
                if not evidence:
                    skipped += 1
                    continue
                meta["evidence"] = evidence
                starts[ep.id].update(evidence)
            items.append(Episode(id=qa.id, questions=[qa], meta=meta))
    return items, starts, skipped


def pick_start(item: Episode, points: dict[tuple[str, str], BankPoint]) -> str | None:
    """The turn a manager sample starts at: its last evidence turn that has facts."""
    conv = item.meta["conversation"]
    with_facts = [t for t in item.meta["evidence"] if points[(conv, t)].facts]
    return with_facts[-1] if with_facts else None


class OneStepRollouts:
    """Runs one-step samples: copies of each sample's bank through the manager slot (for the
    manager policy) and the query lane, one batched ``generate`` per slot."""

    def __init__(self, pipeline: ResolvedPipeline, kind: str, role: str,
                 llms: dict[str, LLMBackend], policy_sampling: SamplingParams,
                 frozen_sampling: SamplingParams, tokenizer: TextTokenizer,
                 resources: Resources) -> None:
        def build(slot: ResolvedSlot) -> tuple[ResolvedSlot, Component]:
            sampling = policy_sampling if slot.role == role else frozen_sampling
            return slot, build_component(slot, llms, sampling, tokenizer, resources)

        self.kind = kind
        self.manager = build(ingest_plan(pipeline).writer) if kind == "manager" else None
        self.query = [build(slot) for slot in pipeline.query]

    def run(self, items: Sequence[Episode], points: dict[tuple[str, str], BankPoint],
            samples: int) -> list[RolloutResult]:
        """``samples`` results per item, item by item."""
        jobs: list[tuple[Episode, int, RolloutState, list[TraceStep]]] = []
        for item in items:
            point = points[(item.meta["conversation"], item.meta["turn"])]
            qa = item.questions[0]
            for k in range(samples):
                rid = f"{item.id}#{k}" if samples > 1 else item.id
                state = RolloutState(
                    id=rid, values={Port.FACTS: list(point.facts), Port.QUESTION: qa.question},
                    memory=point.bank.clone() if self.manager else point.bank)
                jobs.append((item, k, state, []))
        batch = [(state, steps) for _, _, state, steps in jobs]
        for slot, comp in ([self.manager] if self.manager else []) + self.query:
            PipelineRuntime.run_slot(slot, comp, batch, unit=None)
        out = []
        for item, k, state, steps in jobs:
            qa = item.questions[0]
            answer = state.values.get(Port.ANSWER)
            trace = Trace(rollout_id=state.id, episode_id=item.id, question_id=qa.id, sample=k,
                          steps=steps, answer=answer)
            out.append(RolloutResult(item, qa, k, answer, trace, state.turns,
                                     memory=state.memory))
        return out


def load_conversations(data: DataConfig) -> list[Episode]:
    """The conversation episodes a data section names."""
    from memfactory_core.data.loaders import load_episodes

    if not data.path:
        raise MemFactoryError("Memory-R1 training reads a conversation file: set data.path")
    return load_episodes(data.path, format=data.format, limit=data.limit, seed=data.seed,
                         exclude_ids=data.exclude_ids(), **data.load_options())


class MemoryR1Trainer(GRPOTrainer):
    """:class:`GRPOTrainer` whose rollouts are Memory-R1's one-step samples."""

    def __init__(
        self,
        config: TrainConfig,
        callbacks: Sequence[TrainingCallback] = (),
        episodes: Sequence[Episode] | None = None,
        loader: Callable[[ModelConfig], LLMBackend] = default_loader,
    ) -> None:
        opts = config.memory_r1
        if opts is None:
            raise MemFactoryError("MemoryR1Trainer needs a memory_r1 section in the config")
        self.options: MemoryR1Options = opts
        conversations = list(episodes) if episodes is not None else load_conversations(
            config.data)
        super().__init__(config, callbacks, conversations, loader)
        self.kind = policy_kind(self.pipeline, config.trained_roles)
        role = config.trained_roles[0]
        policy = replace(config.generation.sampling(), seed=None)
        frozen = replace(policy, temperature=opts.frozen_temperature)
        llms = dict(self.runtime.llms)
        resources = self.runtime.resources
        cache = (Path(opts.cache_dir) if opts.cache_dir
                 else memfactory_home() / "cache" / "memory_r1")
        self.builder = BankBuilder(self.pipeline, llms, frozen, self.policy.tokenizer, resources,
                                   self.runtime.new_memory, opts.bank, cache)
        self.points: dict[tuple[str, str], BankPoint] = {}
        self.episodes = self._prepare(conversations, "data")
        self.validation: list[Episode] = []
        if opts.validation is not None:
            self.validation = self._prepare(load_conversations(opts.validation),
                                            "memory_r1.validation")
        args = (self.pipeline, self.kind, role, llms)
        self.sampler = OneStepRollouts(*args, policy, frozen, self.policy.tokenizer, resources)
        self.greedy = OneStepRollouts(*args, replace(policy, temperature=0.0), frozen,
                                      self.policy.tokenizer, resources)

    def _prepare(self, conversations: Sequence[Episode], where: str) -> list[Episode]:
        items, starts, skipped = one_step_samples(conversations, self.kind)
        for ep in conversations:
            for tid, point in self.builder.points(ep, starts.get(ep.id, set())).items():
                self.points[(ep.id, tid)] = point
        usable, no_facts = [], 0
        for item in items:
            if self.kind == "manager":
                item.meta["turn"] = pick_start(item, self.points)
                if item.meta["turn"] is None:
                    no_facts += 1
                    continue
            usable.append(item)
        if not usable:
            raise MemFactoryError(f"{where}: no usable {self.kind} samples ({skipped} questions "
                                  f"without an evidence turn in the turns read, {no_facts} "
                                  "whose evidence turns have no facts)")
        caches = "; ".join(self.builder.last_cache.get(ep.id, "?") for ep in conversations)
        print(f"memory_r1 {where}: {len(usable)} {self.kind} samples from "
              f"{len(conversations)} conversation(s); left out {skipped} questions without an "
              f"evidence turn read and {no_facts} whose evidence turns have no facts; banks: "
              f"{caches}", file=sys.stderr)
        return usable

    def rollout(self, episodes: Sequence[Episode]) -> tuple[list[RolloutResult], list[int]]:
        g = self.config.num_generations
        results = self.sampler.run(episodes, self.points, g)
        return results, [i // g for i in range(len(results))]

    def validate(self) -> dict[str, float]:
        """Greedy decisions on the validation samples, scored by the training rewards."""
        with torch.no_grad():
            results = self.greedy.run(self.validation, self.points, 1)
        totals, components = compute_rewards(results, self.config.rewards, self.reward_ctx)
        n = len(results)
        return {"eval/reward": sum(totals) / n, "eval/samples": float(n),
                **{f"eval/rewards/{k}": sum(v) / n for k, v in components.items()}}

    def train_step(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        metrics, records = super().train_step()
        every = self.options.eval_steps
        if self.validation and (self.step % every == 0 or self.step == self.config.max_steps):
            t0 = time.perf_counter()
            metrics.update(self.validate())
            metrics["eval/seconds"] = time.perf_counter() - t0
        return metrics, records
