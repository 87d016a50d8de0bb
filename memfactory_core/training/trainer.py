"""GRPO over memory pipelines: multi-conversation trajectories, LoRA, trajectory advantages.

Why a compact trainer and not TRL's ``GRPOTrainer`` (1.16): its step is built around one
prompt -> one completion per sample (``_generate_and_score_completions`` tokenizes prompts,
generates, scores and computes advantages per completion, then ``_compute_loss`` consumes
fixed ``prompt_ids``/``completion_ids`` tensors). A MemAgent trajectory is many turns (one
memory write per chunk, then an answer) whose number varies between trajectories and whose
prompts depend on earlier completions, with one reward for the whole trajectory. Hosting
that in GRPOTrainer means overriding generation, scoring, batching and advantage code, i.e.
most of the class, against private APIs that change between releases. So rollouts run
through :class:`PipelineRuntime`, every trained turn becomes a (prompt, completion,
trajectory-advantage) sample, and :func:`loss.grpo_loss` applies TRL's loss with its
normalisation per ``loss_type``; a test checks it against ``GRPOTrainer._compute_loss``.
The optimiser, LoRA and device handling are torch + peft + accelerate.

Memory of a step (measured by ``bench/train_memory.py``): what grows with the batch is the
activations kept for the backward pass, every layer's for every prompt and completion token
of a micro-batch, i.e. gigabytes for a few thousand tokens. So the policy runs with SDPA
attention and gradient checkpointing (only each layer's input is kept), turns go through
forward/backward in micro-batches under a token budget (the loss is weighted so that any
split gives the whole-batch loss), completion log-probabilities come from the picked logit
minus a row-wise logsumexp (never a full-vocabulary log-probability tensor), the old and
reference log-probabilities are computed without autograd. On the CPU, most of the resident
memory was allocator slack, not tensors: glibc kept freed activations in its heap (see
:func:`~memfactory_core.llm.transformers_backend.limit_allocator_slack`), so freed blocks now
go back to the system at once, and what is left is trimmed after the rollouts and the update.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from memfactory_core.data.episode import Episode
from memfactory_core.errors import MemFactoryError, Problem, ValidationError
from memfactory_core.eval.config import ModelConfig
from memfactory_core.eval.runner import default_loader, resolve_pipeline
from memfactory_core.llm.base import Generation, LLMBackend, Prompt, SamplingParams
from memfactory_core.pipeline.runtime import PipelineRuntime, RolloutResult
from memfactory_core.pipeline.spec import ResolvedPipeline
from memfactory_core.training.advantages import group_advantages
from memfactory_core.training.callbacks import TrainingCallback
from memfactory_core.training.config import TrainConfig
from memfactory_core.training.loop import CHECKPOINT_PREFIX as CHECKPOINT_PREFIX
from memfactory_core.training.loop import CONFIG_FILE as CONFIG_FILE
from memfactory_core.training.loop import CheckpointedLoop
from memfactory_core.training.loop import latest_checkpoint as latest_checkpoint
from memfactory_core.training.loss import grpo_loss, micro_batch_share, selective_log_softmax
from memfactory_core.training.rewards import RewardContext, compute_rewards


@dataclass
class TurnSample:
    """One trained turn: its tokens and the advantage of the trajectory it belongs to."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    trajectory: int


class AdapterDisabledBackend(LLMBackend):
    """The policy's backend with its LoRA adapter switched off: the frozen base model for
    roles that are not trained, with no second copy of the weights."""

    def __init__(self, inner: LLMBackend, peft_model: Any) -> None:
        self.inner = inner
        self.peft_model = peft_model
        self.model_name = f"{inner.model_name} (base)"

    @property
    def tokenizer(self) -> Any:
        return self.inner.tokenizer

    @property
    def supports_choices(self) -> bool:  # type: ignore[override]
        return self.inner.supports_choices

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams,
                 choices: Sequence[Sequence[str]] | None = None) -> list[Generation]:
        with self.peft_model.disable_adapter():
            return self.inner.generate(prompts, params, choices)


def load_episodes_for(config: TrainConfig) -> list[Episode]:
    """The training episodes a config names (synthetic task or data file)."""
    d = config.data
    if d.synthetic is not None:
        from memfactory_core.training.synthetic import build_synthetic

        s = d.synthetic
        episodes = build_synthetic(s.episodes, s.facts, s.filler_sentences, s.keys, s.values,
                                   s.seed)
        return episodes[: d.limit] if d.limit else episodes
    from memfactory_core.data.loaders import load_episodes

    assert d.path is not None
    docs = d.doc_counts[0]
    return load_episodes(d.path, format=d.format, n_docs=docs, limit=d.limit, seed=d.seed,
                         exclude_ids=d.exclude_ids())


def load_tensors(file: Path) -> Any:
    """A checkpoint file of tensors and plain values; anything else (code objects a
    tampered file could run on load, a damaged file) is refused with a clear error."""
    import pickle

    try:
        return torch.load(file, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in first:
            first = "it holds objects other than tensors and plain values"
        raise MemFactoryError(f"checkpoint file {file} is refused: {first}. Resume from "
                              "another checkpoint or start a new run.") from None


def _enable_checkpointing(model: Any) -> None:
    """Gradient (activation) checkpointing of every decoder layer, non-reentrant, with the
    frozen embeddings' output carrying grad so LoRA layers behind it get theirs."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.enable_input_require_grads()


class GRPOTrainer(CheckpointedLoop):
    """Trains the policy roles of a pipeline with GRPO; see the module docstring."""

    def __new__(cls, config: TrainConfig, *args: Any, **kwargs: Any) -> GRPOTrainer:
        # a config with a memory_r1 section trains one-step policies: same trainer, other
        # rollouts (memory_r1.MemoryR1Trainer), wherever a trainer is built
        if cls is GRPOTrainer and config.memory_r1 is not None:
            from memfactory_core.training.memory_r1 import MemoryR1Trainer

            cls = MemoryR1Trainer
        return super().__new__(cls)

    def __init__(
        self,
        config: TrainConfig,
        callbacks: Sequence[TrainingCallback] = (),
        episodes: Sequence[Episode] | None = None,
        loader: Callable[[ModelConfig], LLMBackend] = default_loader,
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir)
        self.pipeline: ResolvedPipeline = resolve_pipeline(config)
        missing = [r for r in config.trained_roles if r not in self.pipeline.roles]
        if missing:
            raise ValidationError("invalid TrainConfig", [Problem(
                "trained_roles", f"{missing} not used by pipeline {self.pipeline.spec.name!r} "
                f"(its roles: {self.pipeline.roles})")])
        self.episodes = list(episodes) if episodes is not None else load_episodes_for(config)
        if not self.episodes:
            raise MemFactoryError("no training episodes")
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        self._setup_model()
        self._setup_runtime(loader)
        self._setup_optimizer()
        self.step = 0

    # ----------------------------------------------------------------- set-up
    def _setup_model(self) -> None:
        from accelerate import Accelerator
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from memfactory_core.llm.models import resolve_model_path
        from memfactory_core.llm.transformers_backend import (
            limit_allocator_slack,
            resolve_device,
            resolve_dtype,
        )

        cfg = self.config
        device = resolve_device(cfg.device)
        if device.type == "cpu":
            limit_allocator_slack()
        self.accelerator = Accelerator(cpu=device.type == "cpu")
        options = dict(cfg.model.options)
        allowed = {"attn_implementation", "dtype", "max_batch_size", "trust_remote_code"}
        unknown = set(options) - allowed
        if unknown:
            raise ValidationError("invalid TrainConfig", [Problem(
                "model.options",
                f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")])
        self.base_path = resolve_model_path(cfg.model.model)
        trust = bool(options.get("trust_remote_code", False))
        self.tokenizer = AutoTokenizer.from_pretrained(self.base_path, trust_remote_code=trust)
        dtype = resolve_dtype(options.get("dtype"), self.accelerator.device)
        base = AutoModelForCausalLM.from_pretrained(
            self.base_path, dtype=dtype, use_safetensors=True, trust_remote_code=trust,
            attn_implementation=options.get("attn_implementation", "sdpa"))
        if cfg.gradient_checkpointing:
            _enable_checkpointing(base)
        lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
        # seeded here: preparing a built-in model on first use draws from the global RNG
        torch.manual_seed(cfg.seed)
        self.model = get_peft_model(base, lcfg).to(self.accelerator.device)
        self.model.train()
        self._max_batch_size = int(options.get("max_batch_size", 64))

    def _setup_runtime(self, loader: Callable[[ModelConfig], LLMBackend]) -> None:
        from memfactory_core.llm.transformers_backend import TransformersBackend

        cfg = self.config
        self.policy = TransformersBackend(self.model, self.tokenizer,
                                          max_batch_size=self._max_batch_size,
                                          model_name=str(cfg.model.model))
        rollout: LLMBackend = self.policy
        self.vllm: Any = None
        if cfg.rollout_backend == "vllm":
            from memfactory_core.llm.vllm_backend import VLLMBackend

            # vLLM accepts LoRA ranks 8, 16, 32, ...: the smallest that holds the adapter
            rank = max(8, 1 << (cfg.lora.r - 1).bit_length())
            options = {"max_lora_rank": rank, **cfg.vllm_options}
            self.vllm = VLLMBackend(self.base_path, enable_lora=True, **options)
            rollout = self.vllm
        llms: dict[str, LLMBackend] = {}
        frozen = AdapterDisabledBackend(self.policy, self.model)
        for role in self.pipeline.roles:
            if role in cfg.trained_roles:
                llms[role] = rollout
            elif role in cfg.roles:
                llms[role] = loader(cfg.roles[role])
            else:
                llms[role] = frozen
        sampling = replace(cfg.generation.sampling(), seed=None)
        self.runtime = PipelineRuntime(self.pipeline, llms, sampling=sampling,
                                       tokenizer=self.policy.tokenizer)
        self.reward_ctx = RewardContext(tokenizer=self.policy.tokenizer)

    def _setup_optimizer(self) -> None:
        from transformers import get_scheduler

        cfg = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=cfg.max_steps * cfg.num_iterations)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)

    @property
    def peft_model(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ data
    def episodes_for_step(self, step: int) -> list[Episode]:
        """The questions of 0-based ``step``: a seeded shuffle per epoch, so a resumed run
        sees exactly what an uninterrupted one would."""
        q, n = self.config.questions_per_step, len(self.episodes)
        out = []
        for i in range(step * q, (step + 1) * q):
            epoch, pos = divmod(i, n)
            order = list(range(n))
            random.Random(self.config.seed * 100_003 + epoch).shuffle(order)
            out.append(self.episodes[order[pos]])
        return out

    # --------------------------------------------------------------- rollouts
    def rollout(self, episodes: Sequence[Episode]) -> tuple[list[RolloutResult], list[int]]:
        """G trajectories per question, ordered group by group; the group id of each."""
        results = self.runtime.run(episodes, samples=self.config.num_generations)
        groups: dict[tuple[str, str], list[RolloutResult]] = defaultdict(list)
        for r in results:
            groups[(r.episode.id, r.qa.id)].append(r)
        ordered: list[RolloutResult] = []
        group_ids: list[int] = []
        for gid, (_, members) in enumerate(groups.items()):
            if len(members) != self.config.num_generations:
                raise MemFactoryError(f"group {gid} has {len(members)} trajectories, expected "
                                      f"{self.config.num_generations}")
            members.sort(key=lambda r: r.sample)
            ordered.extend(members)
            group_ids.extend([gid] * len(members))
        return ordered, group_ids

    def turn_samples(self, results: Sequence[RolloutResult], advantages: torch.Tensor
                     ) -> list[TurnSample]:
        """Every trained turn of every trajectory, carrying its trajectory's advantage."""
        out = []
        roles = set(self.config.trained_roles)
        for i, r in enumerate(results):
            for turn in r.turns:
                gen: Generation = turn["generation"]
                if turn.get("role") not in roles or not gen.completion_ids:
                    continue
                if gen.prompt_ids is None:
                    raise MemFactoryError(f"the {turn.get('component')} turn carries no token "
                                          "ids: trained roles need a local backend")
                out.append(TurnSample(list(gen.prompt_ids), list(gen.completion_ids),
                                      float(advantages[i]), i))
        return out

    # ------------------------------------------------------------------ loss
    def _batch_tensors(self, batch: Sequence[TurnSample]) -> dict[str, torch.Tensor]:
        pad = self.policy.pad_token_id
        p_len = max(len(s.prompt_ids) for s in batch)
        c_len = max(len(s.completion_ids) for s in batch)
        n = len(batch)
        prompt = torch.full((n, p_len), pad, dtype=torch.long)
        prompt_mask = torch.zeros((n, p_len), dtype=torch.long)
        completion = torch.full((n, c_len), pad, dtype=torch.long)
        completion_mask = torch.zeros((n, c_len), dtype=torch.long)
        for i, s in enumerate(batch):
            if s.prompt_ids:
                prompt[i, p_len - len(s.prompt_ids):] = torch.tensor(s.prompt_ids)
                prompt_mask[i, p_len - len(s.prompt_ids):] = 1
            completion[i, : len(s.completion_ids)] = torch.tensor(s.completion_ids)
            completion_mask[i, : len(s.completion_ids)] = 1
        device = self.accelerator.device
        return {
            "prompt_ids": prompt.to(device), "prompt_mask": prompt_mask.to(device),
            "completion_ids": completion.to(device),
            "completion_mask": completion_mask.to(device),
            "advantages": torch.tensor([s.advantage for s in batch], device=device),
        }

    def per_token_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-probabilities of the completion tokens under the current model, ``(B, T)``."""
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        # positions as at generation time (left padding does not shift them)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        t = inputs["completion_ids"].shape[1]
        logits = self.model(input_ids=ids, attention_mask=attention, position_ids=position_ids,
                            logits_to_keep=t + 1, use_cache=False).logits[:, :-1, :]
        return selective_log_softmax(logits, inputs["completion_ids"],
                                     self.config.loss_temperature)

    def _micro_batches(self, samples: list[TurnSample]) -> list[list[TurnSample]]:
        """Turns sorted by length (similar lengths together keep padding small), packed into
        micro-batches of at most ``per_device_train_batch_size`` rows (or an even split into
        ``gradient_accumulation_steps``) whose padded size, rows x (longest prompt + longest
        completion), stays within ``max_tokens_per_micro_batch``."""
        cfg = self.config
        if not samples:
            return []
        rows = cfg.per_device_train_batch_size
        if cfg.gradient_accumulation_steps:
            rows = math.ceil(len(samples) / min(cfg.gradient_accumulation_steps, len(samples)))
        budget = cfg.max_tokens_per_micro_batch
        ordered = sorted(samples, key=lambda s: (len(s.prompt_ids), len(s.completion_ids)))
        out: list[list[TurnSample]] = []
        current: list[TurnSample] = []
        p_len = c_len = 0
        for s in ordered:
            p, c = max(p_len, len(s.prompt_ids)), max(c_len, len(s.completion_ids))
            if current and (len(current) == rows
                            or (budget is not None and (len(current) + 1) * (p + c) > budget)):
                out.append(current)
                current, p, c = [], len(s.prompt_ids), len(s.completion_ids)
            current.append(s)
            p_len, c_len = p, c
        out.append(current)
        return out

    def _max_completion_length(self) -> int:
        if self.config.max_completion_length is not None:
            return self.config.max_completion_length
        limits = [getattr(s.params, "max_new_tokens", None) for s in self.pipeline.ingest
                  + self.pipeline.query if s.role in self.config.trained_roles]
        limits += [getattr(self.pipeline.memory_params, "max_tokens", None)]
        return max(int(x) for x in limits if x)

    def prepare_micro_batches(self, samples: list[TurnSample]) -> list[dict[str, torch.Tensor]]:
        """Tensors of each micro-batch, with the reference (``beta > 0``: adapter disabled)
        and old (``num_iterations > 1``) log-probabilities computed without autograd."""
        cfg = self.config
        micro = [self._batch_tensors(b) for b in self._micro_batches(samples)]
        with torch.no_grad():
            if cfg.beta > 0:
                with self.peft_model.disable_adapter():
                    for m in micro:
                        m["ref"] = self.per_token_logps(m)
            if cfg.num_iterations > 1:
                for m in micro:
                    m["old"] = self.per_token_logps(m)
        return micro

    def accumulate_gradients(self, micro: Sequence[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Forward and backward over every micro-batch, adding into the parameters' ``.grad``:
        the gradients of the whole step's loss, however the turns were split. Returns that
        loss and the token-weighted KL and clip ratios."""
        cfg = self.config
        total_tokens = sum(int(m["completion_mask"].sum()) for m in micro)
        total_rows = sum(len(m["advantages"]) for m in micro)
        stats: dict[str, float] = defaultdict(float)
        for m in micro:
            out = grpo_loss(
                self.per_token_logps(m), m.get("old"), m.get("ref"), m["advantages"],
                m["completion_mask"], loss_type=cfg.loss_type, beta=cfg.beta,
                epsilon_low=cfg.epsilon_low, epsilon_high=cfg.clip_high,
                max_completion_length=self._max_completion_length(),
                num_items_in_batch=total_tokens,
            )
            loss = out.loss * micro_batch_share(cfg.loss_type, len(m["advantages"]),
                                                out.tokens, total_rows, total_tokens)
            self.accelerator.backward(loss)
            w = out.tokens / max(total_tokens, 1)
            stats["loss"] += float(loss.detach())
            if out.kl is not None:
                stats["kl"] += out.kl * w
            stats["clip_ratio/low_mean"] += out.clip_low * w
            stats["clip_ratio/high_mean"] += out.clip_high * w
            stats["clip_ratio/region_mean"] += out.clip_region * w
        return dict(stats)

    def optimize(self, samples: list[TurnSample]) -> dict[str, float]:
        """``num_iterations`` optimizer updates on one step's turn samples."""
        cfg = self.config
        if cfg.beta == 0 and all(s.advantage == 0 for s in samples):
            return self._zero_gradient_update()
        micro = self.prepare_micro_batches(samples)
        stats: dict[str, float] = defaultdict(float)
        for _ in range(cfg.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            for k, v in self.accumulate_gradients(micro).items():
                stats[k] += v
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            stats["grad_norm"] += float(grad_norm)
            self.optimizer.step()
            self.scheduler.step()
        return {**{k: v / cfg.num_iterations for k, v in stats.items()},
                "micro_batches": float(len(micro))}

    def _zero_gradient_update(self) -> dict[str, float]:
        """Every advantage is 0 and there is no KL term, so the loss and all its gradients
        are exactly 0: skip the forward and backward passes but still step the optimizer
        and scheduler, as a full pass would (Adam's momentum still moves the weights)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        for _ in range(self.config.num_iterations):
            self.optimizer.zero_grad(set_to_none=False)
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self.optimizer.step()
            self.scheduler.step()
        return {"loss": 0.0, "clip_ratio/low_mean": 0.0, "clip_ratio/high_mean": 0.0,
                "clip_ratio/region_mean": 0.0, "grad_norm": 0.0, "micro_batches": 0.0}

    # ------------------------------------------------------------------ steps
    def train_step(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """One GRPO step: rollouts, rewards, trajectory advantages, optimizer update(s)."""
        from memfactory_core.llm.transformers_backend import release_free_memory

        cfg = self.config
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed * 1_000_003 + self.step)
        if self.vllm is not None:
            adapter_dir = self.output_dir / "rollout_adapter"
            self.peft_model.save_pretrained(adapter_dir)
            self.vllm.set_adapter(adapter_dir)
        episodes = self.episodes_for_step(self.step)
        results, _ = self.rollout(episodes)
        release_free_memory()
        t_rollout = time.perf_counter() - t0
        totals, components = compute_rewards(results, cfg.rewards, self.reward_ctx)
        rewards = torch.tensor(totals)
        adv = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        samples = self.turn_samples(results, adv.advantages)
        t1 = time.perf_counter()
        opt = self.optimize(samples) if samples else {"loss": 0.0, "grad_norm": 0.0}
        release_free_memory()
        t_train = time.perf_counter() - t1
        self.step += 1
        elapsed = time.perf_counter() - t0
        generated = sum(len(t["generation"].completion_ids or []) for r in results
                        for t in r.turns)
        metrics: dict[str, float] = {
            "step": self.step,
            "reward": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **{f"rewards/{k}": sum(v) / len(v) for k, v in components.items()},
            "frac_reward_zero_std": adv.frac_zero_std,
            "zero_std_groups": adv.zero_std_groups,
            **opt,
            "learning_rate": self.scheduler.get_last_lr()[0],
            "trained_turns": len(samples),
            "turns_per_trajectory": len(samples) / len(results),
            "completion_length": (sum(len(s.completion_ids) for s in samples) / len(samples)
                                  if samples else 0.0),
            "prompt_length": (sum(len(s.prompt_ids) for s in samples) / len(samples)
                              if samples else 0.0),
            "tokens_per_second": (sum(len(s.prompt_ids) + len(s.completion_ids)
                                      for s in samples) + generated) / elapsed,
            "rollout_time": t_rollout,
            "train_time": t_train,
            "step_time": elapsed,
            "epoch": self.step * cfg.questions_per_step / len(self.episodes),
        }
        logged = self.step % cfg.logging_steps == 0 or self.step in (1, cfg.max_steps)
        recs = self._sample_records(results, totals, components, adv.advantages) if logged else []
        return metrics, recs

    def _sample_records(self, results: Sequence[RolloutResult], totals: list[float],
                        components: dict[str, list[float]], advantages: torch.Tensor
                        ) -> list[dict[str, Any]]:
        n = min(self.config.save_samples, len(results))
        # spread over groups: the first trajectory of as many groups as possible
        g = self.config.num_generations
        picks = sorted(range(len(results)), key=lambda i: (i % g, i))[:n]
        out = []
        for i in picks:
            r = results[i]
            out.append({
                "step": self.step, "trajectory": i, "episode_id": r.episode.id,
                "question": r.qa.question, "answers": r.qa.answers, "prediction": r.answer,
                "reward": totals[i], "advantage": float(advantages[i]),
                "rewards": {k: v[i] for k, v in components.items()},
                "trace": r.trace.model_dump(mode="json"),
            })
        return out

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Adapter (safetensors), optimizer, scheduler and RNG state at the current step."""
        path, tmp = self._checkpoint_paths()
        self.peft_model.save_pretrained(tmp, safe_serialization=True)
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({
            "step": self.step, "max_steps": self.config.max_steps,
            "python_rng": list(random.getstate()[1]),
        }), encoding="utf-8")
        return self._publish_checkpoint(tmp, path)

    def load_checkpoint(self, path: Path) -> None:
        """Restore adapter weights, optimizer, scheduler, RNG and step from ``path``."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(path / "adapter_model.safetensors"),
                            device=str(self.accelerator.device))
        set_peft_model_state_dict(self.peft_model, weights)
        self.optimizer.load_state_dict(load_tensors(path / "optimizer.pt"))
        self.scheduler.load_state_dict(load_tensors(path / "scheduler.pt"))
        torch.set_rng_state(load_tensors(path / "rng_state.pt")["torch"])
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        self.step = int(state["step"])

    # ------------------------------------------------------------------ train
    def train(self) -> dict[str, Any]:
        """Run to ``max_steps`` (or a stop request); returns a summary of the run."""
        dumped = self.config.model_dump(mode="json")
        return self._run_loop({**dumped, "base_model_path": str(self.base_path)}, dumped)


def train(config: TrainConfig, callbacks: Sequence[TrainingCallback] = (),
          episodes: Sequence[Episode] | None = None) -> dict[str, Any]:
    """Build a :class:`GRPOTrainer` for ``config`` and run it."""
    return GRPOTrainer(config, callbacks, episodes).train()
