"""The command line as a user runs it: output, exit codes and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from memfactory_core.paths import ASSETS_DIR, SAMPLE_DATA_DIR

REPO = ASSETS_DIR.parent


def memfactory(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=600)


def test_components_json_lists_schemas() -> None:
    out = memfactory("components", "--json")
    assert out.returncode == 0, out.stderr
    names = {c["name"] for c in json.loads(out.stdout)}
    assert {"token_chunker", "memory_writer", "boxed_answerer"} <= names


def test_run_prints_trace_and_answer(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("Ada Lovelace wrote the first program. " * 60)
    out = memfactory("run", "memagent", "--model", "tiny-random", "--context", str(doc),
                     "--question", "Who wrote the first program?",
                     "-p", "token_chunker.chunk_tokens=200", "-p", "memory.max_tokens=16",
                     "-p", "boxed_answerer.max_new_tokens=8",
                     "-p", "boxed_answerer.answer_prefix=Answer: \\boxed{")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("memory_writer [policy] unit") >= 2
    assert "answer:" in out.stdout
    assert "output: Answer: \\boxed{" in out.stdout


def test_eval_writes_results(tmp_path: Path) -> None:
    out = memfactory("eval", "assets/configs/eval_memagent_tiny.yaml",
                     f"data.path={SAMPLE_DATA_DIR / 'hotpotqa_sample.jsonl'}", "data.docs=10",
                     "data.limit=2", f"output_dir={tmp_path}", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "sub_em=" in out.stdout
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["n"] == 2


def test_malformed_jsonl_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = (SAMPLE_DATA_DIR / "hotpotqa_sample.jsonl").read_text().splitlines()[:3]
    lines[1] = lines[1][:40]
    bad.write_text("\n".join(lines) + "\n")
    out = memfactory("eval", "assets/configs/eval_memagent_tiny.yaml", f"data.path={bad}",
                     f"output_dir={tmp_path}", "--quiet")
    assert out.returncode == 2
    assert f"{bad}:2" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_pipeline_lists_every_error(tmp_path: Path) -> None:
    spec = tmp_path / "p.yaml"
    spec.write_text(
        "name: broken\nmemory: {type: text}\n"
        "ingest:\n  - component: token_chunker\n    params: {chunk_tokens: 0}\n"
        "  - component: memory_scribbler\n"
        "query:\n  - component: boxed_answerer\n    params: {max_new_tokens: lots}\n"
    )
    doc = tmp_path / "doc.txt"
    doc.write_text("text")
    out = memfactory("run", str(spec), "--context", str(doc), "--question", "q")
    assert out.returncode == 2
    assert "3 problem(s)" in out.stderr
    assert "ingest[0] token_chunker: params.chunk_tokens" in out.stderr
    assert "ingest[1].component" in out.stderr and "memory_scribbler" in out.stderr
    assert "query[0] boxed_answerer: params.max_new_tokens" in out.stderr


def test_unknown_model_lists_available(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("text")
    out = memfactory("run", "memagent", "--model", "gpt-7", "--context", str(doc),
                     "--question", "q")
    assert out.returncode == 2
    assert "tiny-random" in out.stderr and "smollm2-135m-instruct" in out.stderr
