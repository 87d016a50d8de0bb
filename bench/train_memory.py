"""Peak memory and seconds of one GRPO update, before vs after the memory levers, on the same
batch of trained turns.

One process runs the step's rollouts (as ``memfactory train`` does at step 1) and saves the
trained turns with their advantages; then each side runs the optimizer update on exactly
those turns in a fresh process, with resident memory sampled every 5 ms from just before the
update to its end:

- before: the trainer's earlier path: no gradient checkpointing, no token budget (turns split
  only by ``per_device_train_batch_size``), full-vocabulary ``log_softmax`` then gather, the
  model's default KV cache in training forwards, and glibc's allocator left as it is;
- after: the trainer as it is (gradient checkpointing, token-budgeted micro-batches,
  selective log-softmax, ``use_cache=False``, freed blocks returned to the system).

Both print the step's loss, which must agree (the levers change memory, not the math). A side
whose RSS passes ``--cap-gb`` is stopped and reported as such, so the machine survives.

Usage: python bench/train_memory.py [CONFIG] [--longest N] [--cap-gb 12] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "assets" / "configs" / "train_memagent_smollm2.yaml"
CAPPED = 3


def _config(path: str, overrides: list[str]) -> Any:
    from memfactory_core.config import load_config
    from memfactory_core.training.config import TrainConfig

    return load_config(path, [*overrides, f"output_dir={tempfile.mkdtemp()}", "max_steps=1"],
                       TrainConfig)


def rollout_child(config: str, overrides: list[str], out: Path) -> None:
    """Step 1's rollouts, rewards and advantages; the trained turns go to ``out``."""
    import torch

    from memfactory_core.training.advantages import group_advantages
    from memfactory_core.training.rewards import compute_rewards
    from memfactory_core.training.trainer import GRPOTrainer

    cfg = _config(config, overrides)
    trainer = GRPOTrainer(cfg)
    torch.manual_seed(cfg.seed * 1_000_003)  # as train_step seeds step 0
    t0 = time.perf_counter()
    results, _ = trainer.rollout(trainer.episodes_for_step(0))
    seconds = time.perf_counter() - t0
    totals, _ = compute_rewards(results, cfg.rewards, trainer.reward_ctx)
    adv = group_advantages(torch.tensor(totals), cfg.num_generations, cfg.scale_rewards)
    samples = trainer.turn_samples(results, adv.advantages)
    out.write_text(json.dumps({"rollout_seconds": seconds, "samples": [
        [s.prompt_ids, s.completion_ids, s.advantage, s.trajectory] for s in samples]}))


def _old_per_token_logps(self: Any, inputs: dict[str, Any]) -> Any:
    """The trainer's log-probabilities before the levers, kept here to measure against."""
    import torch

    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    t = inputs["completion_ids"].shape[1]
    logits = self.model(input_ids=ids, attention_mask=attention, position_ids=position_ids,
                        logits_to_keep=t + 1).logits[:, :-1, :]
    logits = logits.float() / self.config.loss_temperature
    return torch.gather(logits.log_softmax(-1), -1,
                        inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)


def update_child(config: str, overrides: list[str], turns: Path, mode: str,
                 longest: int | None, cap_gb: float) -> dict[str, Any]:
    """One optimizer update on the saved turns, ``before`` or ``after`` the levers."""
    import gc

    import psutil

    from memfactory_core.llm import transformers_backend
    from memfactory_core.training import trainer as trainer_module
    from memfactory_core.training.trainer import GRPOTrainer, TurnSample

    if mode == "before":
        transformers_backend.limit_allocator_slack = lambda: False  # type: ignore[assignment]
        transformers_backend.release_free_memory = lambda: None  # type: ignore[assignment]
        trainer_module.GRPOTrainer.per_token_logps = _old_per_token_logps  # type: ignore[method-assign]
        overrides = [*overrides, "gradient_checkpointing=false",
                     "max_tokens_per_micro_batch=null"]
    data = json.loads(turns.read_text())
    samples = [TurnSample(p, c, a, t) for p, c, a, t in data["samples"]]
    if longest:
        samples = sorted(samples, key=lambda s: -len(s.prompt_ids) - len(s.completion_ids))
        samples = samples[:longest]
    trainer = GRPOTrainer(_config(config, overrides))
    proc = psutil.Process()
    gc.collect()
    transformers_backend.release_free_memory()
    before = proc.memory_info().rss
    peak, done = [before], threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = proc.memory_info().rss
            peak[0] = max(peak[0], rss)
            if rss > cap_gb * 2**30:
                print(json.dumps({"mode": mode, "capped_gb": rss / 2**30}), flush=True)
                os._exit(CAPPED)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    stats = trainer.optimize(samples)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    return {"mode": mode, "turns": len(samples),
            "tokens": sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples),
            "seconds": seconds, "before_gib": before / 2**30, "peak_gib": peak[0] / 2**30,
            "loss": stats["loss"], "micro_batches": stats["micro_batches"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG))
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    parser.add_argument("--longest", type=int, default=None,
                        help="use only the N longest turns (both sides get the same ones)")
    parser.add_argument("--cap-gb", type=float, default=12.0,
                        help="stop a side whose resident memory passes this")
    parser.add_argument("--turns", type=Path, default=None, help="reuse saved turns")
    parser.add_argument("--child", choices=["rollout", "before", "after"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "rollout":
        rollout_child(args.config, args.overrides, args.turns)
        return
    if args.child:
        print(json.dumps(update_child(args.config, args.overrides, args.turns, args.child,
                                      args.longest, args.cap_gb)))
        return

    turns = args.turns or Path(tempfile.mkdtemp()) / "turns.json"
    common = [args.config, *args.overrides, "--turns", str(turns)]
    if args.turns is None:
        subprocess.run([sys.executable, __file__, *common, "--child", "rollout"], check=True,
                       capture_output=True, text=True)
    data = json.loads(turns.read_text())
    lengths = sorted(len(p) + len(c) for p, c, _, _ in data["samples"])
    print(f"== One GRPO update on {Path(args.config).name}: {len(lengths)} trained turns of "
          f"{lengths[0]}-{lengths[-1]} tokens (rollout {data['rollout_seconds']:.0f} s), "
          f"{'the ' + str(args.longest) + ' longest' if args.longest else 'all of them'} ==")
    rows: dict[str, dict[str, Any]] = {}
    for mode in ("before", "after"):
        extra = [f"--longest={args.longest}"] if args.longest else []
        out = subprocess.run([sys.executable, __file__, *common, "--child", mode,
                              f"--cap-gb={args.cap_gb}", *extra],
                             capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
        if not lines:
            raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
        rows[mode] = json.loads(lines[-1])
    for mode, r in rows.items():
        if "capped_gb" in r:
            print(f"{mode:7s}: stopped at {r['capped_gb']:.2f} GiB resident (--cap-gb "
                  f"{args.cap_gb}) before finishing")
            continue
        print(f"{mode:7s}: {r['turns']} turns, {r['tokens']} tokens, "
              f"{r['micro_batches']:.0f} micro-batches, {r['seconds']:7.1f} s, peak RSS "
              f"{r['peak_gib']:.2f} GiB ({r['peak_gib'] - r['before_gib']:+.2f} GiB over the "
              f"loaded trainer), loss {r['loss']:.6f}")
    b, a = rows["before"], rows["after"]
    if "capped_gb" not in b and "capped_gb" not in a:
        same = abs(a["loss"] - b["loss"]) <= 1e-5
        print(f"after / before: {a['peak_gib'] / b['peak_gib']:.2f}x peak memory, "
              f"{a['seconds'] / b['seconds']:.2f}x seconds; same loss: {same}")
        if not same:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
