"""MemAgent rollout batching and memory growth, measured side by side in one run.

1. Throughput over 16 episodes x 4 chunks on tiny-random: all episodes through the batched
   runtime at once vs one episode at a time (target: batched at least 4x faster).
2. Peak memory of one MemAgent rollout over a 50-document vs an 800-document
   RULER-HotpotQA haystack, each in a fresh process (target: the growth is of the order of
   the document text, i.e. nothing but the text scales with it).

Usage: python bench/rollout_batching.py [--hotpotqa PATH] [--skip-memory]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from memfactory_core.data.episode import QA, Episode
from memfactory_core.llm.base import SamplingParams
from memfactory_core.llm.models import load_backend
from memfactory_core.paths import ASSETS_DIR
from memfactory_core.pipeline import PipelineRuntime, load_spec, validate_spec

REPO = ASSETS_DIR.parent
DEFAULT_HOTPOTQA = REPO.parent / "shared" / "data" / "hotpotqa_distractor_500.jsonl"
CHUNK_TOKENS = 256
MEMORY_TOKENS = 32


def memagent(chunk_tokens: int, memory_tokens: int, answer_tokens: int = 8):
    spec = copy.deepcopy(load_spec("memagent"))
    assert isinstance(spec, dict)
    spec["ingest"][0]["params"] = {"chunk_tokens": chunk_tokens}
    spec["memory"]["params"] = {"max_tokens": memory_tokens}
    spec["query"][0]["params"] = {"max_new_tokens": answer_tokens}
    return validate_spec(spec)


def synthetic_episodes(tokenizer, n: int, chunks: int) -> list[Episode]:
    words = "the memory agent reads every document chunk and keeps notes about a question"
    words = words.split()
    episodes = []
    for i in range(n):
        text, k = "", i
        while len(tokenizer.encode(text)) < chunks * CHUNK_TOKENS:
            text += " ".join(words[(k + j) % len(words)] for j in range(50)) + f" {k}.\n"
            k += 7
        ids = tokenizer.encode(text)[: chunks * CHUNK_TOKENS]
        episodes.append(Episode(id=f"e{i}", context=tokenizer.decode(ids), questions=[
            QA(id=f"q{i}", question=f"What number follows item {i}?", answers=[str(i)])]))
    return episodes


def throughput() -> None:
    llm = load_backend("tiny-random", max_batch_size=16)
    # Sampling with a fixed seed and no EOS stop differences: both modes generate full lengths.
    runtime = PipelineRuntime(memagent(CHUNK_TOKENS, MEMORY_TOKENS), llm,
                              sampling=SamplingParams(temperature=0.0, seed=0))
    episodes = synthetic_episodes(llm.tokenizer, 16, 4)
    runtime.run(episodes[:2])  # warm-up
    t0 = time.perf_counter()
    batched = runtime.run(episodes)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [r for ep in episodes for r in runtime.run([ep])]
    t_single = time.perf_counter() - t0
    chunks = [len(r.trace.steps_of("memory_writer")) for r in batched]
    tokens_b = sum(s.completion_tokens for r in batched for s in r.trace.steps)
    tokens_s = sum(s.completion_tokens for r in single for s in r.trace.steps)
    print("== MemAgent rollouts on tiny-random: 16 episodes x 4 chunks ==")
    print(f"chunks per episode: {sorted(set(chunks))}; generated tokens batched {tokens_b}, "
          f"one at a time {tokens_s}")
    print(f"batched:        {t_batched:7.2f} s  {16 / t_batched:7.2f} episodes/s")
    print(f"one at a time:  {t_single:7.2f} s  {16 / t_single:7.2f} episodes/s")
    print(f"speed-up batched / one at a time: {t_single / t_batched:.2f}x (target >= 4x)")


def _peak_child(hotpotqa: Path, docs: int) -> dict:
    """Runs in a fresh process: one rollout over a haystack of ``docs`` documents."""
    from memfactory_core.data.haystack import build_haystacks
    from memfactory_core.data.hotpotqa import load_hotpotqa

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    llm = load_backend("tiny-random")
    records = load_hotpotqa(hotpotqa)
    runtime = PipelineRuntime(memagent(4000, 8, 4), llm)
    runtime.run(build_haystacks(records, 5, seed=1, questions=records[:1]))  # warm-up
    base = rss_mb()
    [episode] = build_haystacks(records, docs, seed=0, questions=records[:1])
    t0 = time.perf_counter()
    [result] = runtime.run([episode])
    return {
        "docs": docs,
        "chars": len(episode.context),
        "tokens": result.trace.steps[0].extra["document_tokens"],
        "chunks": result.trace.steps[0].extra["chunks"],
        "seconds": time.perf_counter() - t0,
        "base_mb": base,
        "peak_mb": rss_mb(),
    }


def peak_memory(hotpotqa: Path) -> None:
    print("\n== Peak memory of one MemAgent rollout (tiny-random, 4000-token chunks) ==")
    if not hotpotqa.is_file():
        print(f"skipped: {hotpotqa} not found (800 documents need the 500-record HotpotQA file)")
        return
    rows = []
    for docs in (50, 800):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(docs), "--hotpotqa", str(hotpotqa)],
            check=True, capture_output=True, text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    for r in rows:
        print(f"{r['docs']:4d} docs: {r['chars'] / 1e6:6.2f} M chars, {r['tokens']:8d} tokens, "
              f"{r['chunks']:4d} chunks, {r['seconds']:6.1f} s, peak RSS {r['peak_mb']:7.1f} MB "
              f"(+{r['peak_mb'] - r['base_mb']:.1f} MB over the loaded model)")
    small, large = rows
    text_growth = (large["chars"] - small["chars"]) / 1e6
    rss_growth = (large["peak_mb"] - large["base_mb"]) - (small["peak_mb"] - small["base_mb"])
    print(f"document text grew by {text_growth:.1f} MB; peak memory grew by {rss_growth:.1f} MB: "
          f"{rss_growth / text_growth:.1f} bytes of memory per byte of text")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hotpotqa", type=Path, default=DEFAULT_HOTPOTQA)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_peak_child(args.hotpotqa, args.child)))
        return
    throughput()
    if not args.skip_memory:
        peak_memory(args.hotpotqa)


if __name__ == "__main__":
    main()
