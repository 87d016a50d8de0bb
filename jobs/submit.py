"""Submitting runs: a config is validated before it is queued, so a queued run never fails
on a typo, and its relative paths are made absolute so any worker can execute it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from jobs.models import RUN_KINDS, Run
from jobs.store import RunStore
from memfactory_core.config import load_config, validate_config
from memfactory_core.errors import MemFactoryError
from memfactory_core.eval.config import EvalConfig
from memfactory_core.paths import ASSETS_DIR
from memfactory_core.training.config import TrainConfig

CONFIG_MODELS: dict[str, type[BaseModel]] = {"train": TrainConfig, "eval": EvalConfig}
PROJECT_DIR = ASSETS_DIR.parent


def _absolute(value: str, base: Path) -> str:
    """``value`` as an absolute path when it names an existing file or folder relative to
    ``base`` or to the project (``assets/...``); otherwise unchanged (a preset or model
    name, a hub id)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    for root in (base, PROJECT_DIR):
        if (root / p).exists():
            return str((root / p).resolve())
    return value


def resolve_paths(config: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file paths of a run config absolute (data, excluded data, pipeline file,
    local model folders)."""
    out = dict(config)
    data = dict(out.get("data") or {})
    for key in ("path", "exclude"):
        if isinstance(data.get(key), str):
            data[key] = _absolute(data[key], base)
    if data:
        out["data"] = data
    if isinstance(out.get("pipeline"), str):
        out["pipeline"] = _absolute(out["pipeline"], base)
    models = [out.get("model"), *(out.get("roles") or {}).values()]
    for m in models:
        if isinstance(m, dict) and isinstance(m.get("model"), str):
            m["model"] = _absolute(m["model"], base)
    if isinstance(out.get("model"), str):
        out["model"] = _absolute(out["model"], base)
    return out


def parse_config_text(text: str, source: str = "config") -> dict[str, Any]:
    """A YAML config typed into a form, as a mapping."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise MemFactoryError(f"{source}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise MemFactoryError(f"{source}: a config must be a mapping, got {type(raw).__name__}")
    return raw


def submit_run(
    store: RunStore,
    kind: str,
    config: str | Path | dict[str, Any],
    overrides: list[str] | None = None,
    *,
    name: str | None = None,
    tags: list[str] | None = None,
    notes: str | None = None,
    parent_id: int | None = None,
    backend: str = "local",
    base_dir: Path | None = None,
) -> Run:
    """Validate ``config`` (a YAML file, or a mapping) as a ``kind`` config and queue it.

    The run writes into its own folder (``MEMFACTORY_HOME/runs/<id>``): the config's
    ``output_dir`` is replaced by it. Training runs are resumable: a run requeued after a
    lost worker continues from its last checkpoint.
    """
    if kind not in CONFIG_MODELS:
        raise MemFactoryError(f"run kind {kind!r} is not one of {', '.join(RUN_KINDS)}")
    model_cls = CONFIG_MODELS[kind]
    base = base_dir or Path.cwd()
    if isinstance(config, dict):
        if overrides:
            raise MemFactoryError("overrides apply to config files; edit the mapping instead")
        raw = dict(config)
        raw.setdefault("output_dir", "pending")
        validated = validate_config(raw, model_cls)
        source = name or f"{kind} config"
    else:
        path = Path(config)
        validated = load_config(path, list(overrides or []), model_cls)
        source = str(path)
    data = resolve_paths(validated.model_dump(mode="json"), base)
    validate_config(data, model_cls, source=source)
    pipeline = data.get("pipeline")
    pipeline_name = (Path(pipeline).stem if isinstance(pipeline, str) and ("/" in pipeline)
                     else pipeline if isinstance(pipeline, str) else "inline")
    model = data["model"]["model"] if isinstance(data.get("model"), dict) else None
    run = store.create_run(
        kind, data, name=name or (Path(config).stem if not isinstance(config, dict) else None),
        pipeline=pipeline_name, model=model, parent_id=parent_id, tags=tags or [],
        notes=notes, resumable=kind == "train", backend=backend,
    )
    data["output_dir"] = run.output_dir
    store.update_run(run.id, config=data)
    run.config = data
    return run
