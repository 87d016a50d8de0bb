"""Training of RMM's reranker (a torch module) with REINFORCE or GRPO over sampled subsets.

A training config with a ``reranker`` section trains the pipeline's reranker slot instead of
an LLM policy, through the same callbacks (``metrics.jsonl``, samples, the run store's sink,
trackers), checkpoint folders (``checkpoint-N/`` with ``trainer_state.json``), resume and
stop requests as :class:`~memfactory_core.training.trainer.GRPOTrainer`.

Each episode's memory is built once by the ingest lane, and each question's top-K candidates
once by the retriever; a step samples top-M subsets for ``questions_per_step`` questions,
rewards each selected memory (evidence overlap, the generator's citations, or a mix) and
updates the module (``listwise`` learns from the evidence labels of all K candidates instead).

With validation conversations, the reranker's deterministic Recall@M on them is measured
before the first step and every ``eval_steps``; the best reranker is kept in
``OUTPUT_DIR/best/`` (``reranker.safetensors`` and ``best.json``), and training stops early
after ``early_stopping_patience`` measurements without a gain.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memfactory_core.components.base import Port, RolloutState
from memfactory_core.components.reranker import candidate_tensors
from memfactory_core.components.retriever import Retriever
from memfactory_core.data.episode import Episode
from memfactory_core.errors import MemFactoryError
from memfactory_core.eval.runner import (
    BackendLoader,
    build_runtime,
    default_loader,
    resolve_pipeline,
)
from memfactory_core.rerank.candidates import (
    Query,
    build_memories,
    evidence_hits,
    make_component,
    query_slots,
    recall_at,
    retrieve_queries,
    share_embeddings,
)
from memfactory_core.rerank.config import RerankerTrainingConfig
from memfactory_core.rerank.features import overlap_tensor
from memfactory_core.rerank.module import (
    WEIGHTS_FILE,
    RerankerModule,
    Selection,
    load_reranker,
    save_reranker,
    select_top_m,
)
from memfactory_core.retrieval.embedders import cached_embedder
from memfactory_core.training.callbacks import TrainingCallback, TrainState
from memfactory_core.training.config import TrainConfig
from memfactory_core.training.loop import CheckpointedLoop


def load_state(file: Path) -> Any:
    """Optimizer or RNG state saved by :meth:`RerankerTrainer.save_checkpoint`: tensors and
    plain values only (anything else is refused)."""
    import pickle

    try:
        return torch.load(file, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise MemFactoryError(f"checkpoint file {file} is refused: it is damaged or holds "
                              f"objects other than tensors ({type(exc).__name__})") from None


BEST_DIR = "best"


def load_training_episodes(config: TrainConfig) -> list[Episode]:
    """The conversations a reranker training config names."""
    from memfactory_core.data.loaders import load_episodes

    d = config.data
    if d.path is None:
        raise MemFactoryError("data.path: reranker training reads a conversation data file "
                              "(LoCoMo or LongMemEval format)")
    return load_episodes(d.path, format=d.format, limit=d.limit, seed=d.seed,
                         exclude_ids=d.exclude_ids(), **d.load_options())


def load_validation_episodes(config: TrainConfig, training: Sequence[Episode]
                             ) -> list[Episode]:
    """The validation conversations of ``reranker.validation_conversations`` (from
    data.path, with data's session and category filters); refused when one is trained on."""
    from memfactory_core.data.loaders import load_episodes

    names = (config.reranker.validation_conversations or []) if config.reranker else []
    if not names:
        return []
    d = config.data
    assert d.path is not None
    shared = sorted(set(names) & {ep.id for ep in training})
    if shared:
        raise MemFactoryError(
            f"reranker.validation_conversations: {shared} are also training conversations; "
            "hold them out of data.conversations")
    options = {**d.load_options(), "conversations": list(names)}
    options.pop("split", None)
    episodes = load_episodes(d.path, format=d.format, **options)
    missing = sorted(set(names) - {ep.id for ep in episodes})
    if missing:
        raise MemFactoryError(f"reranker.validation_conversations: {missing} not found in "
                              f"{d.path}")
    return episodes


def subset_rewards(hits: list[bool] | None, cited: list[bool] | None,
                   rc: RerankerTrainingConfig) -> list[float]:
    """Per selected memory: +1 / -1 for evidence overlap, citation, or their weighted mix."""
    ev = [1.0 if h else -1.0 for h in hits] if hits is not None else None
    ci = [1.0 if c else -1.0 for c in cited] if cited is not None else None
    if rc.reward == "evidence":
        assert ev is not None
        return ev
    if rc.reward == "citation":
        assert ci is not None
        return ci
    assert ev is not None and ci is not None
    total = rc.evidence_weight + rc.citation_weight
    return [(rc.evidence_weight * e + rc.citation_weight * c) / total
            for e, c in zip(ev, ci, strict=True)]


def reinforce_loss(sel: Selection, rewards: list[list[float]], baseline: float
                   ) -> torch.Tensor:
    """RMM's REINFORCE: each pick's log-probability weighted by its reward minus the
    baseline, averaged over the picks (``rewards[i][j]``: query i's j-th pick)."""
    adv = torch.zeros_like(sel.log_probs)
    for i, rs in enumerate(rewards):
        adv[i, : len(rs)] = torch.tensor(rs, dtype=adv.dtype) - baseline
    valid = sel.valid.to(sel.log_probs.dtype)
    return -(adv * sel.log_probs * valid).sum() / valid.sum().clamp(min=1.0)


def listwise_loss(scores: torch.Tensor, mask: torch.Tensor, hits: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """Minus the log of the softmax probability, at ``temperature``, of the candidates that
    hold the question's evidence (``hits`` (B, K), 1.0 for those), averaged over the questions
    that have one among their K candidates (0 when none has)."""
    logits = (scores / temperature).masked_fill(~mask, float("-inf"))
    log_probs = torch.log_softmax(logits, dim=1)
    positive = (hits > 0) & mask
    has = positive.any(dim=1)
    if not bool(has.any()):
        return (scores * 0.0).sum()
    picked = torch.logsumexp(log_probs.masked_fill(~positive, float("-inf")), dim=1)
    return -picked[has].mean()


def grpo_subset_loss(sels: list[Selection], rewards: list[list[list[float]]]) -> torch.Tensor:
    """GRPO over sampled subsets: ``sels[g]`` is sample g of every query, ``rewards[g][i]``
    its per-memory rewards; a subset's reward is their mean, its advantage that reward
    normalised within the query's group, applied to the subset's log-probability."""
    totals = torch.tensor([[float(np.mean(r)) if r else 0.0 for r in g] for g in rewards])
    mean, std = totals.mean(dim=0, keepdim=True), totals.std(dim=0, keepdim=True)
    adv = (totals - mean) / (std + 1e-4)  # (G, B)
    logp = torch.stack([(s.log_probs * s.valid).sum(dim=1) for s in sels])  # (G, B)
    return -(adv * logp).mean()


class _EarlyStop(TrainingCallback):
    """Asks the step loop to stop once the trainer's validation has stopped improving."""

    def __init__(self, trainer: RerankerTrainer) -> None:
        self.trainer = trainer

    def should_stop(self) -> bool:
        return self.trainer.stop_early


class _ValidateFirst(TrainingCallback):
    """Measures the untrained (or resumed-without-a-measure) reranker before the first step,
    so that ``best/`` never holds a reranker worse on validation than the starting one."""

    def __init__(self, trainer: RerankerTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, state: TrainState, config: dict[str, Any]) -> None:
        if self.trainer.best_recall is None:
            self.trainer.output_dir.mkdir(parents=True, exist_ok=True)
            self.trainer.validate()


class RerankerTrainer(CheckpointedLoop):
    """REINFORCE (with a baseline) or GRPO training of a pipeline's reranker slot."""

    def __init__(self, config: TrainConfig, callbacks: Sequence[TrainingCallback] = (),
                 episodes: Sequence[Episode] | None = None,
                 loader: BackendLoader = default_loader) -> None:
        if config.reranker is None:
            raise MemFactoryError("this config has no reranker section")
        self.config = config
        self.rc: RerankerTrainingConfig = config.reranker
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir)
        self.step = 0
        random.seed(config.seed)
        torch.manual_seed(config.seed)
        pipeline = resolve_pipeline(config)
        retriever_slot, reranker_slot, answer_slot = query_slots(pipeline)
        if self.rc.needs_generator and (answer_slot is None
                                        or answer_slot.cls.name != "citing_generator"):
            raise MemFactoryError(
                f"reranker.reward {self.rc.reward!r} needs a citing_generator in the "
                "pipeline's query lane")
        self.runtime = build_runtime(config, pipeline, loader)
        self.sampling = config.generation.sampling()
        retriever = make_component(retriever_slot, self.runtime, self.sampling)
        assert isinstance(retriever, Retriever)
        rparams = reranker_slot.params
        self.top_m: int = rparams.top_m  # type: ignore[attr-defined]
        self.temperature: float = self.rc.temperature or rparams.temperature  # type: ignore[attr-defined]
        self.generator = (make_component(answer_slot, self.runtime, self.sampling)
                          if self.rc.needs_generator and answer_slot is not None else None)
        t0 = time.perf_counter()
        eps = list(episodes) if episodes is not None else load_training_episodes(config)
        if not eps:
            raise MemFactoryError("no training conversations: check data.path and its filters")
        val_eps = load_validation_episodes(config, eps) if episodes is None else []
        self.memories = build_memories(self.runtime, eps + val_eps, self.sampling)
        share_embeddings(self.memories, [qa.question for ep in eps + val_eps
                                         for qa in ep.questions])
        self.queries: list[Query] = retrieve_queries(
            retriever, eps, self.memories, need_evidence=self.rc.reward != "citation")
        self.val_queries: list[Query] = [
            q for q in retrieve_queries(retriever, val_eps, self.memories, need_evidence=True)
            if q.candidates]
        if val_eps and not self.val_queries:
            raise MemFactoryError("reranker.validation_conversations: no question with "
                                  "evidence turn ids and retrieved candidates")
        self.queries = [q for q in self.queries if q.candidates]
        if not self.queries:
            raise MemFactoryError("no training question has retrieved candidates (and, for "
                                  "the evidence reward, evidence turn ids)")
        embedder_name = getattr(rparams, "embedder", None)
        memory = next(iter(self.memories.values()))
        embedder = (self.runtime.resources.embedder(embedder_name) if embedder_name
                    else getattr(getattr(memory, "index", None), "embedder", None))
        if embedder is None:
            raise MemFactoryError("the reranker needs an embedding model: the memory has none "
                                  "(embedder: none) and the reranker slot names none")
        self.embed = cached_embedder(embedder)
        self.setup_seconds = time.perf_counter() - t0
        init = self.rc.init_checkpoint or getattr(rparams, "checkpoint", None)
        self.module = (load_reranker(init, dim=embedder.dim, embedder=embedder.model_name)
                       if init else RerankerModule(embedder.dim, embedder.model_name,
                                                   lexical=self.rc.lexical))
        if self.module.lexical != self.rc.lexical:
            raise MemFactoryError(
                f"reranker.lexical is {self.rc.lexical}, but the starting checkpoint {init} "
                f"was trained with lexical={self.module.lexical}")
        self.module.train()
        groups: list[dict[str, Any]] = [
            {"params": [self.module.w_q.weight, self.module.w_m.weight]}]
        if self.module.lexical_weight is not None:
            groups.append({"params": [self.module.lexical_weight], "weight_decay": 0.0,
                           "lr": self.rc.lexical_learning_rate})
        self.optimizer = torch.optim.Adam(groups, lr=config.learning_rate,
                                          weight_decay=config.weight_decay)
        self.rng = torch.Generator().manual_seed(config.seed)
        self.best_recall: float | None = None
        self.initial_recall: float | None = None
        self.best_step = 0
        self.evals_without_gain = 0
        self.stop_early = False
        if self.val_queries:
            self.callbacks.append(_EarlyStop(self))

    # ------------------------------------------------------------ validation
    def validation_recall(self) -> float:
        """Mean Recall@M on the validation questions, top-M without noise."""
        with torch.no_grad():
            self.module.eval()
            questions = [x.qa.question for x in self.val_queries]
            candidates = [x.candidates for x in self.val_queries]
            q, m, mask = candidate_tensors(self.embed, questions, candidates)
            overlap = (overlap_tensor(questions, candidates, m.shape[1])
                       if self.module.lexical else None)
            sel = select_top_m(self.module.scores(q, m, overlap), self.top_m, 1.0, mask,
                               sample=False)
            self.module.train()
        return float(np.mean([
            recall_at([x.candidates[int(j)] for j in sel.indices[i] if j >= 0],
                      x.qa.evidence, self.top_m) for i, x in enumerate(self.val_queries)]))

    def validate(self) -> dict[str, float]:
        """Measure validation Recall@M; keep the module in ``best/`` when it is the best so
        far, and count measurements without a gain toward early stopping."""
        value = self.validation_recall()
        if self.step == 0:
            self.initial_recall = value
        if self.best_recall is None or value > self.best_recall:
            self.best_recall, self.best_step, self.evals_without_gain = value, self.step, 0
            best = self.output_dir / BEST_DIR
            save_reranker(self.module, best / WEIGHTS_FILE)
            (best / "best.json").write_text(json.dumps({
                "step": self.step, f"val_recall@{self.top_m}": value,
                "validation_conversations": self.rc.validation_conversations}),
                encoding="utf-8")
        else:
            self.evals_without_gain += 1
            patience = self.rc.early_stopping_patience
            self.stop_early = patience is not None and self.evals_without_gain >= patience
        return {f"val_recall@{self.top_m}": value,
                f"val_best_recall@{self.top_m}": float(self.best_recall),
                "val_best_step": float(self.best_step)}

    # ------------------------------------------------------------------ data
    def queries_for_step(self, step: int) -> list[Query]:
        """The questions of step ``step`` (1-based): seeded passes over a shuffled order."""
        n = self.config.questions_per_step
        out = []
        for i in range((step - 1) * n, step * n):
            epoch, pos = divmod(i, len(self.queries))
            order = list(range(len(self.queries)))
            random.Random(self.config.seed * 1_000_003 + epoch).shuffle(order)
            out.append(self.queries[order[pos]])
        return out

    def citations(self, queries: list[Query], selections: list[list[dict[str, Any]]]
                  ) -> list[dict[str, Any]]:
        """The generator's reply for each (query, selected memories): extra of its step."""
        assert self.generator is not None
        states = [RolloutState(id=f"{q.qa.id}#{i}", memory=q.memory,
                               values={Port.QUESTION: q.qa.question, Port.RETRIEVED: sel})
                  for i, (q, sel) in enumerate(zip(queries, selections, strict=True))]
        results = self.generator.run(states)
        return [{**r.extra, "reply": r.output} for r in results]

    # ------------------------------------------------------------------ step
    def train_step(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        cfg, rc = self.config, self.rc
        t0 = time.perf_counter()
        self.step += 1
        queries = self.queries_for_step(self.step)
        questions = [x.qa.question for x in queries]
        q, m, mask = candidate_tensors(self.embed, questions, [x.candidates for x in queries])
        overlap = (overlap_tensor(questions, [x.candidates for x in queries], m.shape[1])
                   if self.module.lexical else None)
        embed_seconds = time.perf_counter() - t0
        scores = self.module.scores(q, m, overlap)
        groups = rc.group_size if rc.algorithm == "grpo" else 1
        sels = [select_top_m(scores, self.top_m, self.temperature, mask, True, self.rng)
                for _ in range(groups)]
        picked: list[list[list[dict[str, Any]]]] = [
            [[x.candidates[int(j)] for j in sel.indices[i] if j >= 0]
             for i, x in enumerate(queries)] for sel in sels]
        hits = [[evidence_hits(p, x.qa.evidence) for p, x in zip(g, queries, strict=True)]
                for g in picked]
        cited: list[list[list[bool]]] | None = None
        replies: list[list[dict[str, Any]]] = []
        t_gen = time.perf_counter()
        if self.generator is not None:
            flat_q = [x for _ in picked for x in queries]
            flat_sel = [p for g in picked for p in g]
            flat = self.citations(flat_q, flat_sel)
            replies = [flat[g * len(queries):(g + 1) * len(queries)] for g in range(groups)]
            cited = [[[i in set(r["citations"]) for i in range(len(p))]
                      for p, r in zip(g, rg, strict=True)] for g, rg in zip(picked, replies,
                                                                              strict=True)]
        gen_seconds = time.perf_counter() - t_gen
        rewards = [[subset_rewards(hits[g][i] if rc.reward != "citation" else None,
                                   cited[g][i] if cited is not None else None, rc)
                    for i in range(len(queries))] for g in range(groups)]
        if rc.algorithm == "listwise":
            all_hits = torch.zeros_like(scores)
            for i, x in enumerate(queries):
                all_hits[i, : len(x.candidates)] = torch.tensor(
                    evidence_hits(x.candidates, x.qa.evidence), dtype=scores.dtype)
            loss = listwise_loss(scores, mask, all_hits, self.temperature)
        else:
            loss = self._loss(sels, rewards)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        flat_r = [r for g in rewards for x in g for r in x]
        flat_h = [h for g in hits for x in g for h in x]
        metrics: dict[str, float] = {
            "step": self.step, "reward": float(np.mean(flat_r)) if flat_r else 0.0,
            "loss": float(loss.detach()), "grad_norm": float(grad_norm),
            "learning_rate": cfg.learning_rate,
            "evidence_hit_share": float(np.mean(flat_h)) if flat_h else 0.0,
            f"recall@{self.top_m}": float(np.mean([
                recall_at(p, x.qa.evidence, self.top_m) for g in picked
                for p, x in zip(g, queries, strict=True) if x.qa.evidence] or [0.0])),
            "adapter_norm": float((self.module.w_q.weight.detach().norm() ** 2
                                   + self.module.w_m.weight.detach().norm() ** 2) ** 0.5),
            "embed_seconds": embed_seconds,
        }
        if self.module.lexical_weight is not None:
            metrics["lexical_weight"] = float(self.module.lexical_weight.detach())
        if cited is not None:
            flat_c = [c for g in cited for x in g for c in x]
            metrics["cited_useful_share"] = float(np.mean(flat_c)) if flat_c else 0.0
            metrics["out_of_range_citations"] = float(sum(len(r["out_of_range"])
                                                          for g in replies for r in g))
            metrics["generation_seconds"] = gen_seconds
        metrics["step_time"] = time.perf_counter() - t0
        if self.val_queries and self.step % rc.eval_steps == 0:
            metrics.update(self.validate())
        samples = []
        if self.step % cfg.logging_steps == 0 and cfg.save_samples:
            for i, x in enumerate(queries[: cfg.save_samples]):
                samples.append({
                    "step": self.step, "question_id": x.qa.id, "question": x.qa.question,
                    "evidence": x.qa.evidence, "candidates": [c["id"] for c in x.candidates],
                    "subsets": [{
                        "selected": [{"id": e["id"], "text": e["text"],
                                      "turn_ids": e.get("turn_ids", [])} for e in picked[g][i]],
                        "rewards": rewards[g][i],
                        **({"reply": replies[g][i]["reply"],
                            "citations": replies[g][i]["citations"],
                            "out_of_range": replies[g][i]["out_of_range"]} if replies else {}),
                    } for g in range(groups)],
                })
        return metrics, samples

    def _loss(self, sels: list[Selection], rewards: list[list[list[float]]]) -> torch.Tensor:
        if self.rc.algorithm == "reinforce":
            return reinforce_loss(sels[0], rewards[0], self.rc.baseline)
        return grpo_subset_loss(sels, rewards)

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Weights (safetensors, with the embedding dimension), optimizer and RNG state."""
        path, tmp = self._checkpoint_paths()
        save_reranker(self.module, tmp / WEIGHTS_FILE)
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state(), "sampler": self.rng.get_state()},
                   tmp / "rng_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({
            "step": self.step, "max_steps": self.config.max_steps, "kind": "reranker",
            "dim": self.module.dim, "embedder": self.module.embedder,
            "best_recall": self.best_recall, "best_step": self.best_step,
            "evals_without_gain": self.evals_without_gain}), encoding="utf-8")
        return self._publish_checkpoint(tmp, path)

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, optimizer, RNG and step from ``path``."""
        loaded = load_reranker(path / WEIGHTS_FILE, dim=self.module.dim,
                               embedder=self.module.embedder)
        self.module.load_state_dict(loaded.state_dict())
        self.optimizer.load_state_dict(load_state(path / "optimizer.pt"))
        rng = load_state(path / "rng_state.pt")
        torch.set_rng_state(rng["torch"])
        self.rng.set_state(rng["sampler"])
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        self.step = int(state["step"])
        self.best_recall = state.get("best_recall")
        self.best_step = int(state.get("best_step") or 0)
        self.evals_without_gain = int(state.get("evals_without_gain") or 0)

    # ------------------------------------------------------------------ train
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (or a stop request); returns a summary as GRPOTrainer's."""
        dumped = self.config.model_dump(mode="json")
        if self.val_queries:
            self.callbacks.insert(0, _ValidateFirst(self))
        summary = {**self._run_loop(dumped, dumped), "setup_seconds": self.setup_seconds,
                   "questions": len(self.queries)}
        if self.val_queries:
            summary.update(validation_questions=len(self.val_queries),
                           best_step=self.best_step, best_checkpoint=str(
                               self.output_dir / BEST_DIR),
                           **{f"val_initial_recall@{self.top_m}": self.initial_recall,
                              f"val_best_recall@{self.top_m}": self.best_recall},
                           stopped_early=self.stop_early)
        return summary


def build_trainer(config: TrainConfig, callbacks: Sequence[TrainingCallback] = ()) -> Any:
    """The trainer a config asks for: the reranker's when it has a ``reranker`` section, else
    the LLM policies' GRPO trainer."""
    if config.reranker is not None:
        return RerankerTrainer(config, callbacks)
    from memfactory_core.training.trainer import GRPOTrainer

    return GRPOTrainer(config, callbacks)
