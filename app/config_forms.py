"""Forms generated from the run config models (``TrainConfig``, ``EvalConfig``), with no
Gradio in it: the fields of a model by dotted name, a config mapping from form values and
back, and the ``memfactory submit`` command line that queues the same config."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import yaml
from pydantic import BaseModel

from app.pipeline_drafts import schema_fields
from memfactory_core.config import load_yaml_text, validate_config
from memfactory_core.errors import MemFactoryError, ValidationError

HIDDEN = ("output_dir",)
"""Fields a form does not show: a queued run writes into its own folder."""

_PLAIN = re.compile(r"^[A-Za-z0-9_./:@+-]+$")


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str):
        return {**schema.get("$defs", {}).get(ref.split("/")[-1], {}),
                **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def form_fields(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Every settable field of ``model``: nested models are flattened into dotted names
    (``data.limit``) under a ``group``; lists, mappings, unions of models and the like are
    ``json`` fields. Each field as :func:`app.pipeline_drafts.schema_fields` describes it,
    plus ``path``, ``group`` and ``required``."""
    schema = model.model_json_schema()
    out: list[dict[str, Any]] = []

    def walk(node: dict[str, Any], prefix: str, group: str) -> None:
        required = set(node.get("required") or [])
        props = node.get("properties") or {}
        described = {f["name"]: f for f in schema_fields({"$defs": schema.get("$defs", {}),
                                                         "properties": props})}
        for name, raw in props.items():
            path = f"{prefix}{name}"
            if path in HIDDEN:
                continue
            prop = _resolve(schema, raw)
            if prop.get("type") == "object" and prop.get("properties"):
                walk(prop, f"{path}.", name)
                continue
            field = {**described[name], "path": path, "group": group,
                     "required": name in required}
            if field["kind"] == "json" and "default" not in raw and not field["required"]:
                field["default"] = None
            out.append(field)

    walk(schema, "", "settings")
    defaults = _effective_defaults(model)
    for f in out:
        node: Any = defaults
        for part in f["path"].split("."):
            node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
        if node is not _MISSING:
            f["default"] = node
    return out


_MISSING = object()


def _effective_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """The default of every field that has one, default factories called (a nested
    model's factory may set other values than its class does)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.is_required():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                out[name] = _effective_defaults(annotation)
            continue
        value = info.get_default(call_default_factory=True)
        out[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else (
            [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
            if isinstance(value, list) else value)
    return out


def flatten(config: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
    """Form values by dotted field name from a config mapping (fields it does not set are
    left out)."""
    values: dict[str, Any] = {}
    if isinstance(config.get("model"), str):  # ``model: NAME`` is ``model: {model: NAME}``
        config = {**config, "model": {"model": config["model"]}}
    for f in fields:
        node: Any = config
        for part in f["path"].split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            values[f["path"]] = node
    return values


def _parse(field: dict[str, Any], value: Any) -> Any:
    """A form value as the config holds it (``None``: not set)."""
    if value is None or (isinstance(value, str) and not value.strip()
                         and field["kind"] != "text"):
        return None
    kind = field["kind"]
    if kind == "json":
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            path = field["path"]
            try:
                return load_yaml_text(value, path)  # refuses alias bombs and huge text
            except MemFactoryError as err:
                reason = str(err).removeprefix(f"{path}: ").removeprefix("not valid YAML: ")
                raise MemFactoryError(f"{path}: not valid JSON or YAML: {reason}") from None
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "text" and value == "" and field["default"] is None:
        return None
    return value


def build_config(fields: list[dict[str, Any]], values: dict[str, Any]) -> dict[str, Any]:
    """A config mapping from form values: set fields that differ from their defaults, and
    the required ones, nested by their dotted names."""
    config: dict[str, Any] = {}
    for f in fields:
        value = _parse(f, values.get(f["path"]))
        if value is None and not f["required"]:
            continue
        if value == f.get("default") and not f["required"]:
            continue
        node = config
        parts = f["path"].split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    if isinstance(config.get("model"), dict) and list(config["model"]) == ["model"]:
        config["model"] = config["model"]["model"]
    return config


def check_config(model: type[BaseModel], config: dict[str, Any]) -> list[str]:
    """The problems of a config, each with its dotted location (empty: valid)."""
    try:
        validate_config({**config, "output_dir": config.get("output_dir", "pending")}, model,
                        source="form")
    except ValidationError as err:
        return [str(p) for p in err.problems]
    except MemFactoryError as err:
        return [str(err)]
    return []


def _leaves(config: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
    return flatten(config, fields)


def _arg(value: Any) -> str:
    if isinstance(value, str):
        return value if _PLAIN.match(value) else json.dumps(value)
    if value is None:
        return "null"
    return json.dumps(value, separators=(",", ":"))


def command_line(kind: str, config: dict[str, Any], fields: list[dict[str, Any]],
                 base_name: str | None = None, base: dict[str, Any] | None = None) -> str:
    """The ``memfactory submit`` line queueing ``config``: the shipped config it started
    from plus ``key=value`` overrides for what the form changed."""
    base = base or {}
    now, before = _leaves(config, fields), _leaves(base, fields)
    args = []
    for f in fields:
        path, default = f["path"], f.get("default")
        value = now.get(path, default)
        if value != before.get(path, default):
            args.append(f"{path}={_arg(value)}")
    target = f"assets/configs/{base_name}" if base_name else "config.yaml"
    return " ".join(["memfactory", "submit", kind, shlex.quote(target),
                     *(shlex.quote(a) for a in args)])


def config_text(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)
