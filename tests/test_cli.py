"""The command line as a user runs it: output, exit codes and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


# ------------------------------------------------- clear errors instead of tracebacks
def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``memfactory ARGS`` in this process: (exit code, stdout, stderr on one line)."""
    from tests.test_jobs_cli import cli

    code, out, err = cli(capsys, *args)
    assert "Traceback" not in err, err
    return code, out, " ".join(err.split())


@pytest.fixture
def db_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/runs.db"
    monkeypatch.setenv("MEMFACTORY_DB_URL", url)
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path / "home"))
    return url


def test_run_with_an_unknown_backend(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("text")
    code, _, err = run_cli(capsys, "run", "memagent", "-c", str(doc), "-q", "?",
                           "--backend", "bogus")
    assert code == 2 and "model.backend" in err and "'transformers'" in err


def test_run_on_a_binary_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    code, _, err = run_cli(capsys, "run", "memagent", "-c", str(blob), "-q", "?")
    assert code == 2 and f"{blob}: not a UTF-8 text file" in err


def test_output_dir_that_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   db_url: str) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    code, _, err = run_cli(capsys, "eval", "assets/configs/eval_memagent_tiny.yaml",
                           f"output_dir={a_file}", "--quiet")
    assert code == 2 and f"{a_file}' is a file, not a folder" in err
    code, _, err = run_cli(capsys, "train", "assets/configs/train_synthetic_tiny.yaml",
                           f"output_dir={a_file / 'sub'}", "--quiet")
    assert code == 2 and f"{a_file}' is a file, not a folder" in err
    code, out, err = run_cli(capsys, "submit", "eval", "assets/configs/eval_memagent_tiny.yaml")
    assert code == 0, err
    code, _, err = run_cli(capsys, "runs", "export", out.strip(), "-o", str(a_file))
    assert code == 2 and f"{a_file}' is a file, not a folder" in err


def test_broken_and_empty_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "eval", "assets/configs/eval_memagent_tiny.yaml",
                           "data.docs=[1,")
    assert code == 2 and "cannot apply overrides" in err
    code, _, err = run_cli(capsys, "eval", "assets/configs/eval_memagent_tiny.yaml",
                           "data.limit=")
    assert code == 2 and "'data.limit=' has no value (write data.limit=null" in err


def test_a_damaged_database_file_is_named(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path, db_url: str) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"\x00not sqlite" * 500)
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2 and f"database sqlite:///{path}: cannot be opened" in err


def test_a_database_driver_that_is_not_installed(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMFACTORY_DB_URL", "mysql://bob:hunter2@db.example/runs")
    code, _, err = run_cli(capsys, "runs", "list")
    assert code == 2 and "driver is not installed (MySQLdb)" in err
    assert "hunter2" not in err


def test_run_ids_too_large_for_the_database(capsys: pytest.CaptureFixture[str],
                                            db_url: str) -> None:
    for command in ("show", "logs", "cancel", "export"):
        code, _, err = run_cli(capsys, "runs", command, "99999999999999999999")
        assert code == 2 and "no run with id 99999999999999999999" in err


def test_runs_list_shows_the_exception_line_of_a_traceback(
        capsys: pytest.CaptureFixture[str], db_url: str) -> None:
    from jobs.store import RunStore

    store = RunStore(url=db_url)
    run = store.create_run("eval", {})
    store.finish(run.id, "failed", error="Traceback (most recent call last):\n"
                 '  File "x.py", line 1, in <module>\n    boom()\n'
                 "ValueError: the real reason")
    code, out, _ = run_cli(capsys, "runs", "list", "--json")
    assert code == 0 and json.loads(out)[0]["error"] == "ValueError: the real reason"


def test_training_into_a_used_folder_is_refused(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    (out_dir / "checkpoint-4").mkdir(parents=True)
    (out_dir / "metrics.jsonl").write_text('{"step": 4}\n')
    code, _, err = run_cli(capsys, "train", "assets/configs/train_synthetic_tiny.yaml",
                           f"output_dir={out_dir}", "--quiet")
    assert code == 2 and f"output_dir '{out_dir}' is not empty (checkpoint-4, metrics.jsonl)" \
        in err and "resume=true" in err and "--overwrite" in err
    assert (out_dir / "checkpoint-4").is_dir(), "nothing was touched"
    assert (out_dir / "metrics.jsonl").read_text() == '{"step": 4}\n'


def test_overwrite_removes_only_what_training_wrote(tmp_path: Path) -> None:
    from app.cli import prepare_train_output

    out_dir = tmp_path / "run"
    (out_dir / "checkpoint-4").mkdir(parents=True)
    (out_dir / "samples").mkdir()
    (out_dir / "metrics.jsonl").write_text("{}\n")
    (out_dir / "notes.txt").write_text("mine")
    prepare_train_output(out_dir, resume=True, overwrite=False)  # resuming: kept as it is
    assert (out_dir / "checkpoint-4").is_dir()
    prepare_train_output(out_dir, resume=False, overwrite=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ["notes.txt"]
    prepare_train_output(tmp_path / "new", resume=False, overwrite=False)
