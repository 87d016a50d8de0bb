"""One single-turn GRPO step through memfactory's trainer vs the same step in bare TRL.

Same model (tiny-random + LoRA r=8), prompts, group size, loss (dapo, beta=0), learning rate,
no gradient checkpointing on either side. The two steps are made to do the same work: both
generate exactly ``MAX_NEW`` tokens per completion (``min_new_tokens``; otherwise memfactory
stops at EOS while TRL's batch runs on), and TRL's one piece of extra work, the entropy it
computes for its logs in every loss pass, is timed on its own (its log-prob pass with and
without entropy on a batch of the step's shape) and taken out of its step. Prints seconds
per step of each, the raw ratio, the entropy cost and the like-for-like ratio (target
<= 1.10). Run with OMP_NUM_THREADS=1 on a shared CPU.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

os.environ.setdefault("MEMFACTORY_HOME", os.path.join(tempfile.gettempdir(), "mfhome-bench"))

STEPS, G, Q, MAX_NEW = 6, 4, 4, 8
QUESTION = "What colour is the river? Notes: The river is old. The bridge is red."


def reward_len(completions: list, **kw: object) -> list[float]:
    return [float(len(c[0]["content"] if isinstance(c, list) else c) % 3) for c in completions]


def trl_step_times(path: str) -> tuple[list[float], float, float]:
    """TRL's seconds per step, the seconds its entropy adds to one loss pass, and its mean
    completion length."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter() - self.t)

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"{QUESTION} #{i}"}]
                                         for i in range(Q * STEPS)]})
    args = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False,
                      gradient_checkpointing=False, per_device_train_batch_size=Q * G,
                      num_generations=G, max_completion_length=MAX_NEW, max_steps=STEPS,
                      learning_rate=1e-2, beta=0.0, loss_type="dapo", report_to=[],
                      save_strategy="no", logging_steps=1, temperature=1.0, seed=0,
                      generation_kwargs={"min_new_tokens": MAX_NEW})
    trainer = GRPOTrainer(model=path, reward_funcs=reward_len, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(path),
                          peft_config=LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj",
                                                                 "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"]),
                          callbacks=[Clock()])
    trainer.train()
    lengths = [r["completions/mean_length"] for r in trainer.state.log_history
               if "completions/mean_length" in r]
    return times, _entropy_cost(trainer), statistics.mean(lengths)


def _entropy_cost(trainer: object) -> float:
    """Median seconds that ``compute_entropy=True`` adds to TRL's forward+backward of the
    step's completion log-probabilities (the pass its ``_compute_loss`` makes)."""
    import torch

    model = trainer.model  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (Q * G, 40 + MAX_NEW), generator=g)
    mask = torch.ones_like(ids)
    cost: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(7):
        for entropy in (False, True):
            t = time.perf_counter()
            logps, _, _ = trainer._get_per_token_logps_and_entropies(  # type: ignore[attr-defined]
                model, ids, mask, MAX_NEW, compute_entropy=entropy)
            logps.sum().backward()
            cost[entropy].append(time.perf_counter() - t)
    model.zero_grad(set_to_none=True)
    return max(0.0, statistics.median(cost[True]) - statistics.median(cost[False]))


def memfactory_step_times() -> tuple[list[float], float]:
    from memfactory_core.config import validate_config
    from memfactory_core.data.episode import QA, Episode
    from memfactory_core.training.config import TrainConfig
    from memfactory_core.training.trainer import GRPOTrainer

    spec = {"name": "single_turn", "memory": {"type": "text"},
            "ingest": [{"component": "token_chunker", "params": {"chunk_tokens": 64}}],
            "query": [{"component": "boxed_answerer", "role": "policy",
                       "params": {"template": "{question}", "max_new_tokens": MAX_NEW}}]}
    cfg = validate_config({
        "pipeline": spec, "model": "tiny-random", "data": {"synthetic": {}},
        "output_dir": tempfile.mkdtemp(), "rewards": [{"name": "f1"}],
        "learning_rate": 1e-2, "num_generations": G, "questions_per_step": Q,
        "per_device_train_batch_size": Q * G, "beta": 0.0, "loss_type": "dapo",
        "max_steps": STEPS, "save_steps": 1000, "max_completion_length": MAX_NEW,
        "gradient_checkpointing": False,
    }, TrainConfig)
    episodes = [Episode(id=f"e{i}", context="x",
                        questions=[QA(id="q", question=f"{QUESTION} #{i}", answers=["old"])])
                for i in range(Q * STEPS)]
    trainer = GRPOTrainer(cfg, episodes=episodes)
    # every completion runs to MAX_NEW tokens, as TRL's do here
    make_config = trainer.policy._generation_config

    def full_length(params: Any) -> Any:
        gen = make_config(params)
        gen.min_new_tokens = params.max_new_tokens
        return gen

    trainer.policy._generation_config = full_length  # type: ignore[method-assign]
    times, lengths = [], []
    for _ in range(STEPS):
        t = time.perf_counter()
        metrics, _ = trainer.train_step()
        times.append(time.perf_counter() - t)
        lengths.append(metrics["completion_length"])
    return times, statistics.mean(lengths)


def main() -> None:
    from memfactory_core.llm.models import prepare_model

    path = str(prepare_model("tiny-random"))
    ours_times, ours_len = memfactory_step_times()
    ours = statistics.median(ours_times[1:])
    trl_times, entropy, trl_len = trl_step_times(path)
    trl = statistics.median(trl_times[1:])
    print(f"memfactory: {ours:.3f} s/step   TRL GRPOTrainer: {trl:.3f} s/step   "
          f"raw ratio {ours / trl:.2f}")
    print(f"mean completion length: memfactory {ours_len:.2f}, TRL {trl_len:.2f} tokens "
          f"(limit {MAX_NEW}); TRL's entropy for its logs costs {entropy:.3f} s/step, which "
          "memfactory does not compute")
    print(f"like-for-like ratio (TRL without its entropy): {ours / (trl - entropy):.2f} "
          f"(target <= 1.10)")


if __name__ == "__main__":
    main()
