"""One single-turn GRPO step through memfactory's trainer vs the same step in bare TRL.

Same model (tiny-random + LoRA r=8), prompts, group size, completion length, loss (dapo,
beta=0) and learning rate; prints seconds per step of each and their ratio (target <= 1.10).
Run with OMP_NUM_THREADS=1 on a shared CPU.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

os.environ.setdefault("MEMFACTORY_HOME", os.path.join(tempfile.gettempdir(), "mfhome-bench"))

STEPS, G, Q, MAX_NEW = 6, 4, 4, 8
QUESTION = "What colour is the river? Notes: The river is old. The bridge is red."


def reward_len(completions: list, **kw: object) -> list[float]:
    return [float(len(c[0]["content"] if isinstance(c, list) else c) % 3) for c in completions]


def trl_step_times(path: str) -> list[float]:
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
                      save_strategy="no", logging_steps=1, temperature=1.0, seed=0)
    trainer = GRPOTrainer(model=path, reward_funcs=reward_len, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(path),
                          peft_config=LoraConfig(r=8, lora_alpha=16, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj",
                                                                 "o_proj", "gate_proj",
                                                                 "up_proj", "down_proj"]),
                          callbacks=[Clock()])
    trainer.train()
    return times


def memfactory_step_times() -> list[float]:
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
    }, TrainConfig)
    episodes = [Episode(id=f"e{i}", context="x",
                        questions=[QA(id="q", question=f"{QUESTION} #{i}", answers=["old"])])
                for i in range(Q * STEPS)]
    trainer = GRPOTrainer(cfg, episodes=episodes)
    times = []
    for _ in range(STEPS):
        t = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    from memfactory_core.llm.models import prepare_model

    path = str(prepare_model("tiny-random"))
    ours = statistics.median(memfactory_step_times()[1:])
    trl = statistics.median(trl_step_times(path)[1:])
    print(f"memfactory: {ours:.3f} s/step   TRL GRPOTrainer: {trl:.3f} s/step   "
          f"ratio {ours / trl:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
