"""A paper-sized MemAgent on one accelerator: batched vs one-at-a-time rollouts, and one GRPO
step with LoRA vs full fine-tuning at batch size 1, measured side by side in one run.

Self-contained on purpose: it needs only torch, transformers, peft and accelerate (no trl, no
vLLM, no hub, no MemFactory install), so it can be copied to a bare GPU machine. The model is
Qwen3-1.7B's published architecture built from its config with random weights (28 layers,
hidden 2048, 16 query / 8 KV heads of 128, MLP 6144, vocabulary 151,936, tied embeddings):
speed and memory depend on shapes, not on trained weights. Prompts are random token ids of
the MemAgent shapes (a template, the memory and a chunk), and generation always runs to its
limit (``min_new_tokens``), since a random model's answers mean nothing.

1. Rollouts: every trajectory reads ``--chunks`` chunks of ``--chunk-tokens`` tokens, writing
   a ``--memory-tokens`` memory after each, then answers. Batched: all trajectories of all
   questions go through ``generate`` together, chunk by chunk (as MemFactory's runtime does);
   one at a time: a few trajectories alone (the rate is per token, so a subset suffices).
2. One GRPO step (dapo loss, trajectory advantages) on the trained turns of one question's
   group: LoRA r=64 on every linear layer with token-budgeted micro-batches (MemFactory's
   way) vs full fine-tuning with batch size 1 (the original MemFactory code's way); both with
   gradient checkpointing and AdamW, each after a one-turn warm-up step (so Adam's state
   exists). Prints seconds per step and peak accelerator memory.

Usage: python bench/gpu_memagent.py            # the paper's shapes, on a GPU
       python bench/gpu_memagent.py --quick    # tiny shapes: under a minute on a CPU
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

QWEN3_1_7B = {  # Qwen/Qwen3-1.7B config.json (architecture only)
    "hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16,
    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 6144,
    "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 40960,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "attention_bias": False, "bos_token_id": 151643, "eos_token_id": 151645,
}
TINY = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 512,
    "tie_word_embeddings": True, "max_position_embeddings": 4096, "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
TEMPLATE_TOKENS = 120  # MemAgent's instruction text around the memory and the chunk


@dataclass
class Turn:
    prompt: list[int]
    completion: list[int]
    trajectory: int


def build_model(quick: bool, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**(TINY if quick else QWEN3_1_7B))
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                 attn_implementation="sdpa")
    return model.eval()


class PeakMemory:
    """Peak accelerator memory (CUDA) or peak resident memory sampled every 5 ms (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @contextmanager
    def measure(self) -> Iterator[dict[str, float]]:
        out: dict[str, float] = {}
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            yield out
            torch.cuda.synchronize()
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            return
        import psutil

        proc, peak, done = psutil.Process(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.005)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield out
        finally:
            done.set()
            thread.join()
            out["peak_gib"] = peak[0] / 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def generate(model: torch.nn.Module, prompts: list[list[int]], new_tokens: int,
             device: torch.device) -> list[list[int]]:
    """Sampled completions of exactly ``new_tokens`` tokens, left-padded batch."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             pad_token_id=0, use_cache=True)
    return out[:, width:].tolist()


def rollouts(model: torch.nn.Module, trajectories: int, args: argparse.Namespace,
             device: torch.device, rng: torch.Generator) -> tuple[list[Turn], int]:
    """MemAgent over ``trajectories`` episodes at once; its turns and generated tokens."""
    vocab = model.config.vocab_size

    def rand(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=rng).tolist()

    memory: list[list[int]] = [[] for _ in range(trajectories)]
    turns: list[Turn] = []
    generated = 0
    for _ in range(args.chunks):
        prompts = [rand(TEMPLATE_TOKENS) + m + rand(args.chunk_tokens) for m in memory]
        memory = generate(model, prompts, args.memory_tokens, device)
        turns += [Turn(p, m, i) for i, (p, m) in enumerate(zip(prompts, memory, strict=True))]
        generated += sum(len(m) for m in memory)
    prompts = [rand(TEMPLATE_TOKENS) + m + rand(args.question_tokens) for m in memory]
    answers = generate(model, prompts, args.answer_tokens, device)
    turns += [Turn(p, a, i) for i, (p, a) in enumerate(zip(prompts, answers, strict=True))]
    generated += sum(len(a) for a in answers)
    return turns, generated


def bench_rollouts(model: torch.nn.Module, args: argparse.Namespace,
                   device: torch.device) -> list[Turn]:
    rng = torch.Generator().manual_seed(0)
    total = args.trajectories * args.questions
    rollouts(model, 1, argparse.Namespace(**{**vars(args), "chunks": 1}), device, rng)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    turns, tokens_b = rollouts(model, total, args, device, rng)
    _sync(device)
    t_b = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokens_s = 0
    for _ in range(args.serial):
        tokens_s += rollouts(model, 1, args, device, rng)[1]
    _sync(device)
    t_s = time.perf_counter() - t0
    prompt = TEMPLATE_TOKENS + args.memory_tokens + args.chunk_tokens
    print(f"== MemAgent rollouts: {args.chunks} chunks of {args.chunk_tokens} tokens, "
          f"{args.memory_tokens}-token memory (prompts up to {prompt} tokens) ==")
    print(f"batched:        {total:3d} trajectories ({args.trajectories} x {args.questions} "
          f"questions) in {t_b:8.1f} s: {tokens_b / t_b:9.1f} generated tokens/s")
    print(f"one at a time:  {args.serial:3d} trajectories, each alone, in {t_s:8.1f} s: "
          f"{tokens_s / t_s:9.1f} generated tokens/s")
    print(f"batched / one at a time: {(tokens_b / t_b) / (tokens_s / t_s):.1f}x tokens/s")
    # the trained turns of one question's group (trajectories 0..G-1)
    return [t for t in turns if t.trajectory < args.trajectories]


def selective_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    rows = []
    for row, index in zip(logits, ids, strict=True):
        row = row.float()
        rows.append(row.gather(-1, index.unsqueeze(-1)).squeeze(-1) - row.logsumexp(-1))
    return torch.stack(rows)


def micro_batches(turns: list[Turn], budget: int | None, rows: int) -> list[list[Turn]]:
    ordered = sorted(turns, key=lambda t: (len(t.prompt), len(t.completion)))
    out: list[list[Turn]] = []
    for t in ordered:
        cur = out[-1] if out else None
        if cur is not None and len(cur) < rows:
            width = (max(len(x.prompt) for x in [*cur, t])
                     + max(len(x.completion) for x in [*cur, t]))
            if budget is None or (len(cur) + 1) * width <= budget:
                cur.append(t)
                continue
        out.append([t])
    return out


def grpo_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, turns: list[Turn],
              advantages: torch.Tensor, budget: int | None, rows: int,
              device: torch.device) -> tuple[float, int]:
    """One dapo GRPO update over ``turns``; returns the loss and the number of micro-batches."""
    optimizer.zero_grad(set_to_none=True)
    batches = micro_batches(turns, budget, rows)
    total_tokens = sum(len(t.completion) for t in turns)
    total = 0.0
    for batch in batches:
        p_len = max(len(t.prompt) for t in batch)
        c_len = max(len(t.completion) for t in batch)
        ids = torch.zeros((len(batch), p_len + c_len), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(batch):
            ids[i, p_len - len(t.prompt):p_len] = torch.tensor(t.prompt)
            ids[i, p_len:p_len + len(t.completion)] = torch.tensor(t.completion)
            mask[i, p_len - len(t.prompt):p_len + len(t.completion)] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       logits_to_keep=c_len + 1, use_cache=False).logits[:, :-1]
        logps = selective_logps(logits, ids[:, p_len:])
        adv = advantages[[t.trajectory for t in batch]].to(device).unsqueeze(1)
        ratio = torch.exp(logps - logps.detach())
        loss = -(torch.min(ratio * adv, ratio.clamp(0.8, 1.28) * adv)
                 * mask[:, p_len:]).sum() / total_tokens
        loss.backward()
        total += float(loss.detach())
        del logits, logps, loss
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return total, len(batches)


def bench_steps(model: torch.nn.Module, turns: list[Turn], args: argparse.Namespace,
                device: torch.device) -> None:
    from peft import LoraConfig, get_peft_model

    peak = PeakMemory(device)
    advantages = torch.randn(args.trajectories, generator=torch.Generator().manual_seed(1))
    tokens = sum(len(t.prompt) + len(t.completion) for t in turns)
    print(f"\n== One GRPO step on {len(turns)} trained turns ({args.trajectories} trajectories "
          f"of one question, {tokens} tokens), gradient checkpointing, AdamW ==")
    model.train()
    model.activation_checkpointing_enable() if hasattr(
        model, "activation_checkpointing_enable") else model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()

    lora = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-5)
    rows = []
    warm_up = [min(turns, key=lambda t: len(t.prompt) + len(t.completion))]
    for name, m, o, budget, batch in (("LoRA", lora, opt, args.token_budget, 64),):
        grpo_step(m, o, warm_up, advantages, budget, batch, device)
        with peak.measure() as mem:
            _sync(device)
            t0 = time.perf_counter()
            _, n = grpo_step(m, o, turns, advantages, budget, batch, device)
            _sync(device)
            dt = time.perf_counter() - t0
        rows.append((f"{name} r={args.lora_r} ({trainable / 1e6:.1f}M trained), "
                     f"{n} micro-batches", dt, mem["peak_gib"]))
    del opt
    model = lora.unload()  # the base model, adapters removed
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    full = sum(p.numel() for p in model.parameters())
    grpo_step(model, opt, warm_up, advantages, None, 1, device)  # also allocates Adam's state
    with peak.measure() as mem:
        _sync(device)
        t0 = time.perf_counter()
        _, n = grpo_step(model, opt, turns, advantages, None, 1, device)
        _sync(device)
        dt = time.perf_counter() - t0
    rows.append((f"full fine-tuning ({full / 1e6:.1f}M trained), batch size 1, "
                 f"{n} micro-batches", dt, mem["peak_gib"]))
    unit = "GPU memory" if device.type == "cuda" else "resident memory"
    for label, dt, gib in rows:
        print(f"{label:60s} {dt:8.2f} s/step   peak {unit} {gib:6.2f} GiB")
    print(f"full fine-tuning / LoRA: {rows[1][1] / rows[0][1]:.2f}x time, "
          f"{rows[1][2] / rows[0][2]:.2f}x peak memory")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes for a CPU check")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--trajectories", type=int, default=16, help="GRPO group size")
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--chunk-tokens", type=int, default=5000)
    parser.add_argument("--memory-tokens", type=int, default=1024)
    parser.add_argument("--question-tokens", type=int, default=40)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--serial", type=int, default=2,
                        help="trajectories run one at a time for the unbatched rate")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--token-budget", type=int, default=32768,
                        help="LoRA micro-batch budget: rows x padded length")
    args = parser.parse_args(argv)
    if args.quick:
        args.trajectories, args.questions, args.chunks = 4, 2, 2
        args.chunk_tokens, args.memory_tokens, args.question_tokens = 48, 16, 8
        args.answer_tokens, args.serial, args.lora_r, args.token_budget = 4, 2, 8, 1024
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = build_model(args.quick, device, dtype)
    n = sum(p.numel() for p in model.parameters())
    name = "tiny Qwen3-shaped" if args.quick else "Qwen3-1.7B-shaped"
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name} model, random weights: {n / 1e6:.1f}M parameters, {dtype}, on {gpu} "
          f"(built in {time.perf_counter() - t0:.1f} s); torch {torch.__version__}")
    turns = bench_rollouts(model, args, device)
    bench_steps(model, turns, args, device)
    print(f"total {time.perf_counter() - t0:.1f} s; trained turns per trajectory "
          f"{math.ceil(len(turns) / args.trajectories)}")


if __name__ == "__main__":
    main()
