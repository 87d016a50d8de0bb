"""Submitting runs: a config is validated before it is queued, so a queued run never fails
on a typo, and its relative paths are made absolute so any worker can execute it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from jobs.data_roots import (
    DataRoots,
    is_path_key,
    path_problems,
    safe_error_message,
    sqlite_file,
)
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
    local model folders, validation data and checkpoints)."""
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
    for section in ("memory_r1", "reranker", "pipeline_params"):
        if isinstance(out.get(section), dict):
            out[section] = _absolute_files(out[section], base)
    return out


def _absolute_files(value: Any, base: Path) -> Any:
    """``value`` with the existing files its path keys name (``validation.path``,
    ``init_checkpoint``, a component's ``checkpoint``, ...) made absolute."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, str) and is_path_key(key) and key not in ("output_dir",
                                                                      "cache_dir"):
            out[key] = _absolute(item, base)
        else:
            out[key] = _absolute_files(item, base)
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


def check_runnable(validated: PipelineRunConfig, source: str,
                   refused: list[Problem] | None = None) -> None:
    """What would make the run fail at once, found now: the pipeline (file, slot order, port
    types, parameters of each component and of the memory, ``pipeline_params`` naming a
    component the pipeline lacks), data files that do not exist, models no worker could
    load. Raises one :class:`ValidationError` listing every problem, ``refused`` (paths a
    submitted run may not use, which are then not looked at) first."""
    from memfactory_core.eval.runner import resolve_pipeline

    problems: list[Problem] = list(refused or [])
    skip = {p.location.split(" ")[0].split(":")[0] for p in problems}
    try:
        if "pipeline" not in skip:
            resolve_pipeline(validated)
    except ValidationError as err:
        problems += [Problem(f"pipeline: {p.location}" if p.location else "pipeline",
                             p.message) for p in err.problems]
    except MemFactoryError as err:
        problems.append(Problem("pipeline", safe_error_message(err)))
    except (OSError, UnicodeDecodeError) as err:
        problems.append(Problem("pipeline", f"cannot read the pipeline file "
                                f"({type(err).__name__})"))
    data = getattr(validated, "data", None)
    for key in ("path", "exclude"):
        value = getattr(data, key, None)
        if (isinstance(value, str) and f"data.{key}" not in skip
                and not Path(value).expanduser().is_file()):
            problems.append(Problem(f"data.{key}", f"no such file: {value}"))
    if "model.model" not in skip:
        problems += _model_problems("model", validated.model)
    for role, mc in validated.roles.items():
        if f"roles.{role}.model" not in skip:
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
    :func:`memfactory_core.config.submitted_config_problems`; every path must lie under the
    data roots, see :mod:`jobs.data_roots`): a bad config raises a
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
    # before anything reads a file the config names (the run's own folder replaces
    # output_dir); refused paths are listed with the other problems and never looked at
    roots = DataRoots.current(db_path=sqlite_file(store.engine.url))
    refused = path_problems(data, roots, base, include_output=False)
    check_runnable(validate_config(data, model_cls, source=source), source, refused)
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
