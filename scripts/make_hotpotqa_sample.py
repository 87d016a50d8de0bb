"""Write the HotpotQA sample shipped with MemFactory: 30 records, unchanged, chosen reproducibly.

Usage: python scripts/make_hotpotqa_sample.py [SOURCE_JSONL] [--out PATH]

Eligible records are those whose 10 paragraphs include every supporting-fact paragraph (the
distractor-setting file in ../shared/data lacks some gold paragraphs in many records). From the
eligible records, in file order, every 5th "bridge" record (first 20) and every 3rd "comparison"
record (first 10) are taken; they are written in file order, each line copied byte for byte.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "hotpotqa_distractor_500.jsonl"
DEFAULT_OUT = REPO_ROOT / "assets" / "data" / "hotpotqa_sample.jsonl"
# question type -> (take every n-th eligible record, how many)
PLAN: dict[str, tuple[int, int]] = {"bridge": (5, 20), "comparison": (3, 10)}


def eligible(record: dict) -> bool:
    """Ten paragraphs, and every supporting-fact title among them."""
    titles = {title for title, _ in record["context"]}
    gold = {title for title, _ in record["supporting_facts"]}
    return len(record["context"]) == 10 and gold <= titles


def select_lines(lines: list[str], plan: dict[str, tuple[int, int]] = PLAN) -> list[str]:
    """The planned records of each type (see the module docstring), in file order."""
    by_type: dict[str, list[int]] = {t: [] for t in plan}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("type") in by_type and eligible(record):
            by_type[record["type"]].append(i)
    chosen: list[int] = []
    for qtype, (step, count) in plan.items():
        picked = by_type[qtype][::step][:count]
        if len(picked) < count:
            raise SystemExit(f"only {len(picked)} {qtype} records selected (need {count})")
        chosen.extend(picked)
    return [lines[i] for i in sorted(chosen)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"source not found: {args.source}", file=sys.stderr)
        return 1
    lines = args.source.read_text(encoding="utf-8").splitlines(keepends=True)
    chosen = [line if line.endswith("\n") else line + "\n" for line in select_lines(lines)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(chosen), encoding="utf-8")
    types = Counter(json.loads(line).get("type") for line in chosen)
    print(f"wrote {len(chosen)} records to {args.out} ({dict(types)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
