"""Merge a run's LoRA adapter into its base model: a plain safetensors model folder (with
tokenizer) that ``memfactory eval`` and ``memfactory run`` load like any other model."""

from __future__ import annotations

import json
from pathlib import Path

from memfactory_core.errors import MemFactoryError
from memfactory_core.training.trainer import CONFIG_FILE, latest_checkpoint


def export_merged(run_dir: str | Path, output: str | Path | None = None,
                  checkpoint: str | Path | None = None) -> Path:
    """Write ``base + adapter`` (the latest checkpoint unless one is named) to ``output``
    (default ``RUN_DIR/merged``) and return it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = Path(run_dir)
    cfg_path = run / CONFIG_FILE
    if not cfg_path.is_file():
        raise MemFactoryError(f"{run} is not a training run (no {CONFIG_FILE})")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run)
    if ckpt is None or not (ckpt / "adapter_config.json").is_file():
        raise MemFactoryError(f"no adapter checkpoint in {run}")
    base_path = cfg.get("base_model_path")
    if not base_path or not Path(base_path).is_dir():
        from memfactory_core.llm.models import resolve_model_path

        base_path = str(resolve_model_path(cfg["model"]["model"]))
    base = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, str(ckpt)).merge_and_unload()
    out = Path(output) if output else run / "merged"
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(out)
    (out / "memfactory_export.json").write_text(json.dumps(
        {"base_model": cfg["model"]["model"], "checkpoint": str(ckpt.resolve())}, indent=1),
        encoding="utf-8")
    return out
