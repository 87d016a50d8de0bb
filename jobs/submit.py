"""Submitting runs: a config is validated before it is queued, so a queued run never fails
on a typo, and its relative paths are made absolute so any worker can execute it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jobs.models import RUN_KINDS, Run
from jobs.store import RunStore
from memfactory_core.config import (
    MAX_CONFIG_BYTES,
    check_submitted_config,
    load_config,
    parse_config_mapping,
    validate_config,
)
from memfactory_core.errors import MemFactoryError, Problem, ValidationError
from memfactory_core.eval.config import EvalConfig, ModelConfig, PipelineRunConfig
from memfactory_core.llm.models import builtin_model_names
from memfactory_core.paths import ASSETS_DIR
from memfactory_core.training.config import TrainConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
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
    """A YAML config typed into a form, as a mapping (size and alias expansion limited)."""
    if not isinstance(text, str):
        raise MemFactoryError(f"{source}: a config must be YAML text")
    return parse_config_mapping(text, source)


def _config_size(config: dict[str, Any], source: str) -> None:
    try:
        size = len(json.dumps(config, default=str).encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as err:
        raise MemFactoryError(f"{source}: not storable as JSON ({err})") from None
    if size > MAX_CONFIG_BYTES:
        raise MemFactoryError(f"{source}: {size} bytes once expanded, more than a config may "
                              f"have ({MAX_CONFIG_BYTES} bytes)")


def _model_problems(where: str, mc: ModelConfig) -> list[Problem]:
    """A model that no worker could load: neither built in, a local folder, nor in the local
    Hugging Face cache (remote models of the openai backend are not checked)."""
    if mc.backend == "openai":
        return []
    name = mc.model
    if name in builtin_model_names() or Path(name).expanduser().is_dir():
        return []
    if _HUB_ID.match(name):
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=name, local_files_only=True)
            return []
        except Exception:
            return [Problem(f"{where}.model", f"unknown model {name!r}: not in the local "
                            "Hugging Face cache")]
    return [Problem(f"{where}.model", (
        f"unknown model {name!r}: not a built-in model ({', '.join(builtin_model_names())}), "
        "an existing model folder or a hub id in the local cache"))]


def check_runnable(validated: PipelineRunConfig, source: str) -> None:
    """What would make the run fail at once, found now: the pipeline (file, slot order, port
    types, parameters of each component and of the memory, ``pipeline_params`` naming a
    component the pipeline lacks), data files that do not exist, models no worker could
    load. Raises one :class:`ValidationError` listing every problem."""
    from memfactory_core.eval.runner import resolve_pipeline

    problems: list[Problem] = []
    try:
        resolve_pipeline(validated)
    except ValidationError as err:
        problems += [Problem(f"pipeline: {p.location}" if p.location else "pipeline",
                             p.message) for p in err.problems]
    except MemFactoryError as err:
        problems.append(Problem("pipeline", str(err)))
    data = getattr(validated, "data", None)
    for key in ("path", "exclude"):
        value = getattr(data, key, None)
        if isinstance(value, str) and not Path(value).expanduser().is_file():
            problems.append(Problem(f"data.{key}", f"no such file: {value}"))
    problems += _model_problems("model", validated.model)
    for role, mc in validated.roles.items():
        problems += _model_problems(f"roles.{role}", mc)
    if problems:
        raise ValidationError(f"{source}: cannot run", problems)


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

    Everything that would make the run fail at once is checked first (see
    :func:`check_runnable`), and so is what a submitted run may not do (see
    :func:`memfactory_core.config.submitted_config_problems`): a bad config raises a
    :class:`MemFactoryError` listing every problem and queues nothing.

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
        source = name or f"{kind} config"
        _config_size(config, source)
        raw = dict(config)
        raw.setdefault("output_dir", "pending")
        validated = validate_config(raw, model_cls, source=source)
    else:
        path = Path(config)
        validated = load_config(path, list(overrides or []), model_cls)
        source = str(path)
    data = resolve_paths(validated.model_dump(mode="json"), base)
    _config_size(data, source)
    check_submitted_config(data, source)
    check_runnable(validate_config(data, model_cls, source=source), source)
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
