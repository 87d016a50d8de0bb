"""Building RULER-HotpotQA haystacks from the full shared HotpotQA file, side by side:
50 questions at 50 documents vs at 800 documents (target: 800 documents in under 3 s, i.e.
the cost grows with the text written, not with a search over the pool).

Usage: python bench/haystack_build.py [--hotpotqa PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from memfactory_core.data import ParagraphPool, build_haystacks, load_hotpotqa
from memfactory_core.paths import ASSETS_DIR

DEFAULT_HOTPOTQA = ASSETS_DIR.parent.parent / "shared" / "data" / "hotpotqa_distractor_500.jsonl"
ROUNDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hotpotqa", type=Path, default=DEFAULT_HOTPOTQA)
    args = parser.parse_args()
    if not args.hotpotqa.is_file():
        raise SystemExit(f"no HotpotQA file at {args.hotpotqa} (see ../shared/data/README)")
    records = load_hotpotqa(args.hotpotqa)
    pool = ParagraphPool.from_records(records)
    times: dict[int, list[float]] = {50: [], 800: []}
    for _ in range(ROUNDS):
        for docs in times:  # alternating, so a busy spell hits both sizes
            t0 = time.perf_counter()
            episodes = build_haystacks(records, docs, questions=records[:50], pool=pool)
            times[docs].append(time.perf_counter() - t0)
            assert len(episodes) == 50
    small, large = (statistics.median(times[d]) for d in (50, 800))
    print(f"50 questions at 50 docs: {small:.3f} s; at 800 docs: {large:.3f} s "
          f"(median of {ROUNDS}; ratio {large / small:.1f}x for 16x the documents; "
          f"target < 3 s at 800)")
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
