"""MemAgent rollout batching and memory growth, measured side by side in one run.

1. Throughput over 16 episodes x 4 chunks on tiny-random: all episodes through the batched
   runtime at once vs one episode at a time (target: batched at least 4x faster).
2. Memory that one MemAgent rollout adds over a 50-document vs an 800-document
   RULER-HotpotQA haystack, each in a fresh process (target: the growth is of the order of
   the document text, i.e. nothing but the text scales with it). Resident memory is sampled
   every 2 ms from just before the rollout to its end, and the figure is the peak minus the
   level before it, so the model's load does not hide it (the process-wide peak would). A
   control run holds an extra ``CONTROL_MB`` alive during the 50-document rollout: its
   figure must come out that much higher, or the measurement cannot see what it claims to.

Usage: python bench/rollout_batching.py [--hotpotqa PATH] [--skip-memory] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import threading
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
CONTROL_MB = 200


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


class RssSampler:
    """Peak resident memory of this process, sampled in a thread while it is running."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def added_mb(self) -> float:
        return (self.peak - self.before) / 2**20


def _rollout_child(hotpotqa: Path, docs: int, extra_mb: int) -> dict:
    """Runs in a fresh process: one rollout over a haystack of ``docs`` documents; with
    ``extra_mb``, the rollout also keeps that much memory alive from its first call on."""
    import gc

    from memfactory_core.data.haystack import build_haystacks
    from memfactory_core.data.hotpotqa import load_hotpotqa
    from memfactory_core.llm.transformers_backend import release_free_memory

    llm = load_backend("tiny-random")
    held: list[bytes] = []
    if extra_mb:
        generate = llm.generate

        def generate_holding(prompts, params):  # type: ignore[no-untyped-def]
            if not held:
                held.append(b"\x01" * (extra_mb * 2**20))  # written, so resident
            return generate(prompts, params)

        llm.generate = generate_holding  # type: ignore[method-assign]
    records = load_hotpotqa(hotpotqa)
    runtime = PipelineRuntime(memagent(4000, 8, 4), llm)
    runtime.run(build_haystacks(records, 5, seed=1, questions=records[:1]))  # warm-up
    held.clear()
    [episode] = build_haystacks(records, docs, seed=0, questions=records[:1])
    gc.collect()
    release_free_memory()
    t0 = time.perf_counter()
    with RssSampler() as rss:
        [result] = runtime.run([episode])
    seconds = time.perf_counter() - t0
    return {
        "docs": docs,
        "extra_mb": extra_mb,
        "held_mb": sum(len(b) for b in held) / 2**20,
        "chars": len(episode.context),
        "tokens": result.trace.steps[0].extra["document_tokens"],
        "chunks": result.trace.steps[0].extra["chunks"],
        "seconds": seconds,
        "before_mb": rss.before / 2**20,
        "added_mb": rss.added_mb,
    }


def rollout_memory(hotpotqa: Path) -> None:
    print("\n== Memory one MemAgent rollout adds (tiny-random, 4000-token chunks) ==")
    if not hotpotqa.is_file():
        print(f"skipped: {hotpotqa} not found (800 documents need the 500-record HotpotQA file)")
        return
    rows = []
    for docs, extra in ((50, 0), (800, 0), (50, CONTROL_MB)):
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(docs), "--extra-mb", str(extra),
             "--hotpotqa", str(hotpotqa)],
            check=True, capture_output=True, text=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    for r in rows:
        label = f" + {r['held_mb']:.0f} MB held" if r["extra_mb"] else ""
        print(f"{r['docs']:4d} docs{label:16s}: {r['chars'] / 1e6:6.2f} M chars, "
              f"{r['tokens']:8d} tokens, {r['chunks']:4d} chunks, {r['seconds']:6.1f} s, "
              f"RSS {r['before_mb']:7.1f} MB before, +{r['added_mb']:7.1f} MB during the rollout")
    small, large, control = rows
    seen = control["added_mb"] - small["added_mb"]
    ok = abs(seen - control["held_mb"]) <= 0.2 * control["held_mb"]
    verdict = "the measurement sees it" if ok else "FAILED: the measurement does not see it"
    print(f"control: holding {control['held_mb']:.0f} MB during the rollout measured "
          f"{seen:+.1f} MB over the plain one ({verdict})")
    text_growth = (large["chars"] - small["chars"]) / 1e6
    rss_growth = large["added_mb"] * 2**20 / 1e6 - small["added_mb"] * 2**20 / 1e6
    print(f"document text grew by {text_growth:.1f} MB; the rollout's memory grew by "
          f"{rss_growth:.1f} MB: {rss_growth / text_growth:.1f} bytes of memory per byte of text")
    if not ok:
        raise SystemExit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hotpotqa", type=Path, default=DEFAULT_HOTPOTQA)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--extra-mb", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_rollout_child(args.hotpotqa, args.child, args.extra_mb)))
        return
    if not args.skip_throughput:
        throughput()
    if not args.skip_memory:
        rollout_memory(args.hotpotqa)


if __name__ == "__main__":
    main()
