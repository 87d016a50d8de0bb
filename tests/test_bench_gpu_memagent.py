"""bench/gpu_memagent.py stays runnable: its quick mode on the CPU, with only the libraries
the GPU machine has (no trl, no vLLM, no MemFactory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = """
import runpy, sys
sys.argv = ["gpu_memagent.py", "--quick", "--device", "cpu"]
runpy.run_path("bench/gpu_memagent.py", run_name="__main__")
pulled = sorted(m for m in ("trl", "vllm", "memfactory_core", "datasets") if m in sys.modules)
print("PULLED", pulled)
"""


@pytest.mark.slow
def test_quick_mode_runs_on_the_cpu_without_trl() -> None:
    out = subprocess.run([sys.executable, "-c", RUN], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "PULLED []" in text, text
    assert "tiny Qwen3-shaped model" in text
    for line in ("batched:", "one at a time:", "batched / one at a time:", "LoRA r=8",
                 "full fine-tuning (", "full fine-tuning / LoRA:"):
        assert line in text, (line, text)
    lines = text.splitlines()
    [lora] = [x for x in lines if x.startswith("LoRA r=8")]
    [full] = [x for x in lines if x.startswith("full fine-tuning (")]
    # LoRA trains far fewer weights than full fine-tuning, and packs turns into fewer
    # micro-batches than batch size 1 (one per turn)
    assert float(lora.split("(")[1].split("M")[0]) < float(full.split("(")[1].split("M")[0])
    n_lora = int(lora.split(", ")[1].split()[0])
    n_full = int(full.split(", ")[2].split()[0])
    assert n_lora < n_full
    assert "s/step" in lora and "GiB" in full
