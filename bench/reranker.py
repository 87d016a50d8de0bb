"""RMM reranker on a CPU, measured side by side in one run:

1. training steps per second (4 questions x top-20 candidates, 384-d: scores, Gumbel top-5,
   REINFORCE loss, backward, Adam) against the cost of embedding that same batch's texts with
   all-MiniLM-L6-v2 (what a step would cost without the embedding cache);
2. scoring 1,000 queries x 20 candidates in one batched call vs one query at a time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reranker.py [--embedder minilm|hashing-384]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from memfactory_core.data.loaders import load_episodes
from memfactory_core.paths import ASSETS_DIR
from memfactory_core.rerank.module import RerankerModule, select_top_m
from memfactory_core.retrieval.embedders import load_embedder
from memfactory_core.training.reranker_trainer import reinforce_loss


def texts_for_batch(n_queries: int, k: int) -> tuple[list[str], list[str]]:
    """Real questions and conversation turns from the bundled sample (repeated as needed)."""
    eps = load_episodes(str(ASSETS_DIR / "data" / "conversations_sample.json"))
    questions = [qa.question for ep in eps for qa in ep.questions]
    turns = [f"{t.speaker}: {t.text}" for ep in eps if ep.conversation
             for t in ep.conversation.turns()]
    qs = [questions[i % len(questions)] + f" ({i})" for i in range(n_queries)]
    ms = [turns[i % len(turns)] + f" ({i})" for i in range(n_queries * k)]
    return qs, ms


def timed(fn, repeat: int) -> float:
    """Seconds per call (best of three rounds of ``repeat`` calls)."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - t0) / repeat)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", default="minilm")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.1f}")

    embedder = load_embedder(args.embedder)
    dim, batch, k, m = embedder.dim, 4, 20, 5
    qs, ms = texts_for_batch(batch, k)
    embedder.embed(qs[:1])  # warm-up
    embed_s = timed(lambda: embedder.embed(qs + ms), 3)

    module = RerankerModule(dim)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    q = torch.from_numpy(embedder.embed(qs))
    mem = torch.from_numpy(embedder.embed(ms)).reshape(batch, k, dim)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        sel = select_top_m(module.scores(q, mem), m, 0.5, sample=True, generator=gen)
        rewards = [[1.0 if j % 3 == 0 else -1.0 for j in row.tolist()] for row in sel.indices]
        loss = reinforce_loss(sel, rewards, 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    step_s = timed(step, args.steps)
    print(f"\n1) one training step, {batch} questions x top-{k} -> top-{m}, {dim}-d "
          f"({embedder.model_name})")
    print(f"   reranker step (cached embeddings): {step_s * 1e3:8.2f} ms  "
          f"= {1 / step_s:8.1f} steps/s")
    print(f"   embedding the step's {len(qs) + len(ms)} texts: {embed_s * 1e3:8.2f} ms  "
          f"= {1 / embed_s:8.1f} batches/s")
    print(f"   embedding / step: {embed_s / step_s:.1f}x")

    n = 1000
    qn = torch.nn.functional.normalize(torch.randn(n, dim), dim=-1)
    mn = torch.nn.functional.normalize(torch.randn(n, k, dim), dim=-1)
    module.eval()

    def batched() -> None:
        with torch.no_grad():
            select_top_m(module.scores(qn, mn), m, 0.5, sample=False)

    def one_by_one() -> None:
        with torch.no_grad():
            for i in range(n):
                select_top_m(module.scores(qn[i:i + 1], mn[i:i + 1]), m, 0.5, sample=False)

    b_s = timed(batched, 3)
    o_s = timed(one_by_one, 1)
    print(f"\n2) scoring and top-{m} of {n} queries x {k} candidates")
    print(f"   batched:    {b_s * 1e3:9.2f} ms")
    print(f"   one by one: {o_s * 1e3:9.2f} ms")
    print(f"   batched is {o_s / b_s:.1f}x faster")


if __name__ == "__main__":
    main()
