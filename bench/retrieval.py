"""Memory-bank retrieval and manager batching, measured side by side in one run.

1. Top-10 query latency of the bank's dense search against brute-force numpy over the same
   embeddings (target: at most 2x), and of its BM25 against bm25s' static index over the same
   texts, at 1k / 10k / 100k entries. Vectors are random unit vectors (the latency does not
   depend on what they encode); texts are synthetic sentences over a Zipf vocabulary.
2. 100 incremental edits (UPDATE of an entry's text, re-embedded in one batch) against a full
   rebuild of the index (every text re-tokenized and re-embedded), at 10k entries with the
   hashing embedder and at 1k entries with all-MiniLM-L6-v2.
3. 16 memory-manager decisions (one per rollout) in one generate call against one at a time,
   on tiny-random (target: at least 4x).

Usage: python bench/retrieval.py [--sizes 1000 10000 100000] [--queries 50] [--skip-minilm]
"""

from __future__ import annotations

import argparse
import copy
import time

import bm25s
import numpy as np

from memfactory_core.memory import Fact, MemoryBank
from memfactory_core.pipeline import PipelineRuntime, load_spec, validate_spec
from memfactory_core.retrieval import SearchIndex, load_embedder, tokenize

DIM = 384


class FixedEmbedder:
    """Stands for a 384-d model when the vectors are given directly."""

    model_name = "random-384"
    dim = DIM

    def embed(self, texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        v = rng.standard_normal((len(texts), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    ranks = np.minimum(rng.zipf(1.3, size=(n, 12)), len(vocab)) - 1
    return [" ".join(vocab[j] for j in row) for row in ranks]


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def query_latency(n: int, n_queries: int) -> None:
    docs = texts(n)
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = SearchIndex(FixedEmbedder())
    keys = [f"m{i}" for i in range(n)]
    for k, t, v in zip(keys, docs, vecs, strict=True):
        index.upsert(k, t, vector=v)
    queries = texts(n_queries, seed=2)
    qvecs = FixedEmbedder().embed(queries)

    def bank_dense() -> None:
        for q in qvecs:
            index.search_vector(q, 10)

    def brute_dense() -> None:
        for q in qvecs:
            s = vecs @ q
            top = np.argpartition(-s, 9)[:10]
            top[np.argsort(-s[top])]

    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index([tokenize(t) for t in docs], show_progress=False)
    qtokens = [tokenize(q) for q in queries]

    def bank_bm25() -> None:
        for q in queries:
            index.search(q, 10, "bm25")

    def bm25s_static() -> None:
        for q in qtokens:
            ref.retrieve([q], k=10, show_progress=False)

    d_bank, d_brute = timed(bank_dense, 5), timed(brute_dense, 5)
    b_bank, b_ref = timed(bank_bm25, 3), timed(bm25s_static, 3)
    per = 1000 / n_queries
    # same ranking as brute force (recall@10 of the bank's dense search)
    agree = np.mean([
        len({h.key for h in index.search_vector(q, 10)}
            & {keys[i] for i in np.argsort(-(vecs @ q))[:10]}) / 10 for q in qvecs[:10]])
    print(f"  {n:>7} entries | dense: bank {d_bank * per:7.3f} ms  numpy {d_brute * per:7.3f} ms"
          f"  ratio {d_bank / d_brute:5.2f}x  recall@10 {agree:.2f} | bm25: bank "
          f"{b_bank * per:7.3f} ms  bm25s {b_ref * per:7.3f} ms  ratio {b_bank / b_ref:5.2f}x")


def edits_vs_rebuild(n: int, embedder_name: str, n_edits: int = 100) -> None:
    embedder = load_embedder(embedder_name)
    docs = texts(n)
    bank = MemoryBank(embedder)
    for t in docs:
        bank.add(t)
    bank.index.flush()
    rng = np.random.default_rng(3)
    targets = rng.choice(n, size=n_edits, replace=False)
    new_texts = texts(n_edits, seed=4)
    before = bank.index.embedded_texts

    def edits() -> None:
        for i, t in zip(targets, new_texts, strict=True):
            bank.update(f"m{i + 1}", t)
        bank.search("w1 w2", 10, "hybrid")  # the next query embeds the changed entries

    def rebuild() -> None:
        index = SearchIndex(embedder)
        for e in bank.active():
            index.upsert(e.id, e.text, group=e.speaker)
        index.flush()

    t_edit = timed(edits, 1)
    embedded = bank.index.embedded_texts - before
    t_full = timed(rebuild, 1)
    print(f"  {n:>7} entries, {embedder.model_name:<40} | {n_edits} edits "
          f"{t_edit * 1000:9.1f} ms ({embedded} texts embedded)  full rebuild "
          f"{t_full * 1000:9.1f} ms  ratio {t_full / t_edit:6.1f}x")


def manager_batching(n: int = 16, max_new_tokens: int = 32) -> None:
    from memfactory_core.llm.models import load_backend

    spec = copy.deepcopy(load_spec("memory_r1"))
    assert isinstance(spec, dict)
    spec["memory"]["params"]["embedder"] = "hashing-64"
    spec["ingest"][2]["params"]["max_new_tokens"] = max_new_tokens
    llm = load_backend("tiny-random")
    runtime = PipelineRuntime(validate_spec(spec), llm)
    manager = runtime.component("ingest", 2)

    def states(k: int) -> list:
        from memfactory_core.components.base import RolloutState

        out = []
        for i in range(k):
            bank = runtime.new_memory()
            assert isinstance(bank, MemoryBank)
            for j in range(5):
                bank.add(f"Person {i} likes hobby number {j} on weekends")
            fact = Fact(text=f"Person {i} now prefers hobby {i % 5} in the evening",
                        turn_ids=[f"D1:{i}"])
            out.append(RolloutState(id=str(i), values={"facts": [fact]}, memory=bank))
        return out

    manager.run(states(n))  # warm-up of both shapes
    manager.run(states(1))

    batched_sets = [states(n) for _ in range(3)]
    single_sets = [states(n) for _ in range(3)]

    def batched() -> None:
        manager.run(batched_sets.pop())

    def single() -> None:
        for s in single_sets.pop():
            manager.run([s])

    t_batched, t_single = timed(batched, 3), timed(single, 3)
    print(f"  {n} decisions, {max_new_tokens} new tokens each | one call {t_batched:.2f} s  "
          f"one at a time {t_single:.2f} s  speed-up {t_single / t_batched:.1f}x (target >= 4x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    print("1. top-10 query latency per query (median of repeated runs)")
    for n in args.sizes:
        query_latency(n, args.queries)
    print("2. 100 incremental edits vs a full rebuild")
    edits_vs_rebuild(10_000, "hashing-384")
    if not args.skip_minilm:
        edits_vs_rebuild(1000, "minilm")
    print("3. memory-manager decisions on tiny-random")
    manager_batching()


if __name__ == "__main__":
    main()
