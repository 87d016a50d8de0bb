"""Pipeline drafts: what the Build tab edits, with no Gradio in it.

A draft is a pipeline spec whose slots carry a stable ``id`` (kept through moves, saves and
reloads; derived from the component name when a file is imported, so the same file always
gives the same ids). The builder, its buttons, the API and the tests all edit drafts through
these functions; :func:`check_draft` validates one with the pipeline validator and places
every problem on its lane, slot and parameter.

Saved drafts live in the store's ``pipelines`` table, one row per name holding every version
(``{"schema_version", "version", "draft", "valid", "file", "history"}``), and each version is
also written as YAML to ``$MEMFACTORY_HOME/pipelines/<name>/v<N>.yaml`` for runs to use.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from jobs.store import RunStore
from memfactory_core.components.base import Stage
from memfactory_core.config import load_yaml_text
from memfactory_core.errors import MemFactoryError, Problem, ValidationError
from memfactory_core.paths import PIPELINES_DIR, SAMPLE_DATA_DIR, memfactory_home
from memfactory_core.pipeline import SlotSpec, component_catalog, load_spec, validate_spec

SCHEMA_VERSION = 1
LANES = ("ingest", "query")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
HISTORY_KEPT = 50
"""Versions of a saved pipeline kept in its store row (every version's file stays)."""

_LOCATION = re.compile(r"^(?P<lane>ingest|query)(\[(?P<index>\d+)\])?(?P<rest>.*)$")
_PARAM = re.compile(r"params\.(?P<param>[A-Za-z0-9_]+)")


class DraftError(MemFactoryError):
    """A draft or an edit that cannot be applied (unknown slot, bad lane, bad name)."""


# ------------------------------------------------------------------ catalog and forms
def schema_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The form fields of a pydantic JSON schema: for each property its ``kind`` (integer,
    number, boolean, enum, text or json), default, bounds, options, whether ``null`` is
    allowed, title and description."""
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return {**defs.get(ref.split("/")[-1], {}), **{k: v for k, v in node.items()
                                                          if k != "$ref"}}
        return node

    fields = []
    for name, raw in (schema.get("properties") or {}).items():
        prop = resolve(raw)
        variants = [resolve(v) for v in prop.get("anyOf", [])] or [prop]
        nullable = any(v.get("type") == "null" for v in variants)
        kinds = [v for v in variants if v.get("type") != "null"]
        main = kinds[0] if kinds else {}
        if len(kinds) > 1:  # int | list[int], str | dict, ...
            types = {v.get("type") for v in kinds}
            main = {"type": "string" if "string" in types and "array" not in types
                    else "json"}
        field: dict[str, Any] = {
            "name": name, "title": prop.get("title") or name,
            "description": prop.get("description") or main.get("description") or "",
            "default": prop.get("default"), "nullable": nullable,
        }
        kind = main.get("type")
        if "enum" in main or "const" in main:
            field["kind"] = "enum"
            field["options"] = list(main.get("enum") or [main.get("const")])
        elif kind in ("integer", "number"):
            field["kind"] = kind
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                if key in main:
                    field[key] = main[key]
        elif kind == "boolean":
            field["kind"] = "boolean"
        elif kind == "string":
            field["kind"] = "text"
            field["multiline"] = "\n" in str(prop.get("default") or "")
        else:
            field["kind"] = "json"
        fields.append(field)
    return fields


def stage_order() -> list[str]:
    """Lifecycle stages in the order the palette groups them."""
    return [str(s) for s in Stage]


def palette(catalog: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every registered component with its form fields, sorted by lifecycle stage."""
    order = {s: i for i, s in enumerate(stage_order())}
    entries = [{**c, "fields": schema_fields(c.get("params_schema") or {})}
               for c in (catalog if catalog is not None else component_catalog())]
    return sorted(entries, key=lambda c: (order.get(c["stage"], len(order)), c["name"]))


def memory_types() -> list[dict[str, Any]]:
    """Every registered memory kind with its description and form (a kind the validator
    does not implement is listed with ``implemented: False``)."""
    from memfactory_core import memory

    registered = getattr(memory, "memory_types", None)
    if registered is not None:
        return [{"type": str(kind), "implemented": True, "description": mt.description,
                 "fields": schema_fields(mt.Params.model_json_schema())}
                for kind, mt in registered().items()]
    from memfactory_core.pipeline import spec as spec_module

    implemented: dict[Any, Any] = getattr(spec_module, "MEMORY_PARAMS", {})
    out = []
    for kind in memory.MemoryKind:
        model = implemented.get(kind)
        out.append({"type": str(kind), "implemented": model is not None, "description": "",
                    "fields": schema_fields(model.model_json_schema()) if model else []})
    return out


# ----------------------------------------------------------------------- drafts
def slot_ids_in_spec() -> bool:
    """Whether pipeline files accept a slot ``id`` (then exports carry the ids)."""
    return "id" in SlotSpec.model_fields


def _new_id(component: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", component or "slot")[:56] or "slot"
    if base[0].isdigit():
        base = f"_{base}"
    if base not in taken:
        return base
    n = 2
    while f"{base}_{n}" in taken:
        n += 1
    return f"{base}_{n}"


def new_draft(name: str = "my_pipeline", memory_type: str = "text") -> dict[str, Any]:
    """An empty draft: a memory type and two empty lanes."""
    return {"schema_version": SCHEMA_VERSION, "name": name, "description": "",
            "memory": {"type": memory_type, "params": {}}, "ingest": [], "query": []}


def normalize_draft(raw: Any) -> dict[str, Any]:
    """A draft from untrusted input (the browser, the API, a file): the known keys in their
    order, every slot with a unique id (missing or repeated ids are replaced). Values are
    kept as given: validation, not this, reports what is wrong with them."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DraftError(f"the draft is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DraftError(f"a draft must be a mapping, got {type(raw).__name__}")
    memory = raw.get("memory") if isinstance(raw.get("memory"), dict) else {}
    draft: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": str(raw.get("name") or "my_pipeline"),
        "description": str(raw.get("description") or ""),
        "memory": {"type": memory.get("type", "text"),
                   "params": dict(memory.get("params") or {})},
    }
    taken: set[str] = set()
    for lane in LANES:
        slots = raw.get(lane) or []
        if not isinstance(slots, list):
            raise DraftError(f"{lane}: a lane must be a list of slots, got "
                             f"{type(slots).__name__}")
        out = []
        for i, slot in enumerate(slots):
            if isinstance(slot, str):
                slot = {"component": slot}
            if not isinstance(slot, dict):
                raise DraftError(f"{lane}[{i}]: a slot must be a mapping, got "
                                 f"{type(slot).__name__}")
            component = str(slot.get("component") or "")
            sid = slot.get("id")
            if not isinstance(sid, str) or not sid or sid in taken:
                sid = _new_id(component, taken)
            taken.add(sid)
            entry: dict[str, Any] = {"id": sid, "component": component,
                                     "params": dict(slot.get("params") or {}),
                                     "role": slot.get("role") or None}
            extra = {k: v for k, v in slot.items()
                     if k not in ("id", "component", "params", "role")}
            entry.update(extra)  # unknown keys stay, for validation to report
            out.append(entry)
        draft[lane] = out
    return draft


def draft_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A draft of a pipeline spec (ids derived from the component names)."""
    return normalize_draft(spec)


def spec_from_draft(draft: dict[str, Any]) -> dict[str, Any]:
    """The pipeline spec of a draft, in a fixed key order (what files and runs get)."""
    keep_ids = slot_ids_in_spec()

    def slot(s: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"component": s.get("component")}
        if keep_ids and s.get("id"):
            out["id"] = s["id"]
        if s.get("role"):
            out["role"] = s["role"]
        if s.get("params"):
            out["params"] = dict(s["params"])
        out.update({k: v for k, v in s.items() if k not in ("id", "component", "params",
                                                             "role")})
        return out

    spec: dict[str, Any] = {"name": draft.get("name") or "my_pipeline"}
    if draft.get("description"):
        spec["description"] = draft["description"]
    memory = draft.get("memory") or {}
    spec["memory"] = {"type": memory.get("type", "text")}
    if memory.get("params"):
        spec["memory"]["params"] = dict(memory["params"])
    for lane in LANES:
        spec[lane] = [slot(s) for s in draft.get(lane) or []]
    return spec


def find_slot(draft: dict[str, Any], slot_id: str) -> tuple[str, int]:
    """The lane and index of slot ``slot_id``."""
    for lane in LANES:
        for i, s in enumerate(draft.get(lane) or []):
            if s.get("id") == slot_id:
                return lane, i
    raise DraftError(f"no slot {slot_id!r} in the pipeline")


def _lane(lane: str) -> str:
    if lane not in LANES:
        raise DraftError(f"unknown lane {lane!r}: ingest or query")
    return lane


def add_slot(draft: dict[str, Any], lane: str, component: str,
             index: int | None = None) -> tuple[dict[str, Any], str]:
    """A copy of ``draft`` with ``component`` added to ``lane`` at ``index`` (default: the
    end), and the new slot's id."""
    from memfactory_core.components.base import registry

    if component not in registry():
        raise DraftError(f"unknown component {component!r}; available: "
                         f"{', '.join(registry())}")
    draft = normalize_draft(copy.deepcopy(draft))
    slots = draft[_lane(lane)]
    taken = {s["id"] for ln in LANES for s in draft[ln]}
    sid = _new_id(component, taken)
    at = len(slots) if index is None else max(0, min(int(index), len(slots)))
    slots.insert(at, {"id": sid, "component": component, "params": {}, "role": None})
    return draft, sid


def move_slot(draft: dict[str, Any], slot_id: str, lane: str, index: int) -> dict[str, Any]:
    """A copy of ``draft`` with slot ``slot_id`` moved to ``lane`` at ``index``."""
    draft = normalize_draft(copy.deepcopy(draft))
    src_lane, src = find_slot(draft, slot_id)
    slot = draft[src_lane].pop(src)
    slots = draft[_lane(lane)]
    slots.insert(max(0, min(int(index), len(slots))), slot)
    return draft


def remove_slot(draft: dict[str, Any], slot_id: str) -> dict[str, Any]:
    """A copy of ``draft`` without slot ``slot_id``."""
    draft = normalize_draft(copy.deepcopy(draft))
    lane, i = find_slot(draft, slot_id)
    del draft[lane][i]
    return draft


def set_slot(draft: dict[str, Any], slot_id: str, params: dict[str, Any] | None = None,
             role: str | None = None) -> dict[str, Any]:
    """A copy of ``draft`` with slot ``slot_id``'s parameters (and role) replaced. Empty
    values are dropped: the parameter takes its default."""
    draft = normalize_draft(copy.deepcopy(draft))
    lane, i = find_slot(draft, slot_id)
    slot = draft[lane][i]
    if params is not None:
        if not isinstance(params, dict):
            raise DraftError(f"{lane}[{i}]: params must be a mapping")
        slot["params"] = {k: v for k, v in params.items() if v != ""}
    slot["role"] = (role or "").strip() or None
    return draft


def order_lanes(draft: dict[str, Any], lanes: dict[str, list[str]]) -> dict[str, Any]:
    """A copy of ``draft`` whose lanes hold the slots ``lanes`` lists by id, in that order
    (what a drag ends with); ids not listed are removed, unknown ids are an error."""
    draft = normalize_draft(copy.deepcopy(draft))
    by_id = {s["id"]: s for ln in LANES for s in draft[ln]}
    for lane in LANES:
        ids = lanes.get(lane, [])
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise DraftError(f"{lane}: unknown slot ids {unknown}")
        draft[lane] = [by_id[i] for i in ids]
    return draft


# ------------------------------------------------------------------------ checks
def locate(problem: Problem, draft: dict[str, Any]) -> dict[str, Any]:
    """A problem with its place in the draft: lane, slot index, slot id and parameter."""
    out: dict[str, Any] = {"location": problem.location, "message": problem.message,
                           "lane": None, "index": None, "slot": None, "param": None}
    m = _LOCATION.match(problem.location or "")
    if m:
        out["lane"] = m["lane"]
        if m["index"] is not None:
            index = int(m["index"])
            out["index"] = index
            slots = draft.get(m["lane"]) or []
            if index < len(slots):
                out["slot"] = slots[index].get("id")
    elif (problem.location or "").startswith("memory"):
        out["lane"] = "memory"
    p = _PARAM.search(problem.location or "")
    if p:
        out["param"] = p["param"]
    return out


def check_draft(draft: dict[str, Any]) -> dict[str, Any]:
    """Validate a draft: ``{"ok", "problems": [located problems], "roles"}``."""
    try:
        resolved = validate_spec(spec_from_draft(draft))
    except ValidationError as err:
        return {"ok": False, "problems": [locate(p, draft) for p in err.problems],
                "roles": []}
    except MemFactoryError as err:
        return {"ok": False, "problems": [locate(Problem("", str(err)), draft)], "roles": []}
    return {"ok": True, "problems": [], "roles": resolved.roles}


def problems_text(checked: dict[str, Any]) -> str:
    """The problems of a check, one per line (empty when there are none)."""
    return "\n".join(f"{p['location']}: {p['message']}" if p["location"] else p["message"]
                     for p in checked["problems"])


# ---------------------------------------------------------------------- YAML files
def draft_yaml(draft: dict[str, Any]) -> str:
    """The draft as deterministic YAML: fixed key order, parameters sorted by name, so the
    same pipeline always gives the same file (clean diffs). It loads in ``memfactory eval``
    unchanged."""
    spec = spec_from_draft(draft)
    for lane in LANES:
        for slot in spec[lane]:
            if "params" in slot:
                slot["params"] = dict(sorted(slot["params"].items()))
    if "params" in spec["memory"]:
        spec["memory"]["params"] = dict(sorted(spec["memory"]["params"].items()))
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=100,
                          default_flow_style=False)


def draft_from_yaml(text: str, source: str = "pipeline") -> dict[str, Any]:
    """A draft of a pipeline YAML (or JSON) text; its slot ids are kept. The text is read
    with the config limits (size, alias expansion)."""
    try:
        data = load_yaml_text(text, source)
    except MemFactoryError as err:
        raise DraftError(str(err)) from None
    if not isinstance(data, dict):
        raise DraftError(f"{source}: a pipeline must be a mapping, got {type(data).__name__}")
    return draft_from_spec(data)


def presets() -> list[str]:
    """Names of the shipped pipeline presets (``assets/pipelines``)."""
    return sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))


def preset_draft(name: str) -> dict[str, Any]:
    """A draft of a shipped preset."""
    if name not in presets():
        raise DraftError(f"no preset {name!r}; presets: {', '.join(presets())}")
    spec = load_spec(name)
    return draft_from_spec(spec if isinstance(spec, dict) else spec.model_dump())


# --------------------------------------------------------------------- the store
def pipelines_dir() -> Path:
    """Where saved pipeline versions are written as YAML."""
    path = memfactory_home() / "pipelines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_PATTERN.match(name):
        raise DraftError(f"pipeline name {name!r}: use 1-100 letters, digits, '_', '.' or "
                         "'-', starting with a letter or digit")
    return name


def save_draft(store: RunStore, draft: dict[str, Any]) -> dict[str, Any]:
    """Save a draft as the next version of the pipeline it names; returns the stored
    record. A draft with problems is saved too (marked not valid), so no work is lost;
    runs only accept valid ones."""
    draft = normalize_draft(draft)
    name = check_name(draft["name"])
    found = store.get_pipeline(name)
    previous = dict(found.spec) if found is not None else {}
    version = int(previous.get("version") or 0) + 1
    folder = pipelines_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"v{version}.yaml"
    file.write_text(draft_yaml(draft), encoding="utf-8")
    checked = check_draft(draft)
    entry = {"version": version, "saved_at": time.time(), "draft": draft,
             "valid": checked["ok"], "file": str(file)}
    history = [*previous.get("history", []), entry][-HISTORY_KEPT:]
    record = {"schema_version": SCHEMA_VERSION, "version": version, "draft": draft,
              "valid": checked["ok"], "file": str(file), "history": history}
    store.save_pipeline(name, record)
    return record


def saved_pipelines(store: RunStore) -> list[dict[str, Any]]:
    """Every saved pipeline: name, latest version, validity, file and update time."""
    out = []
    for p in store.list_pipelines():
        spec = dict(p.spec or {})
        out.append({"name": p.name, "version": spec.get("version"),
                    "valid": bool(spec.get("valid")), "file": spec.get("file"),
                    "updated_at": p.updated_at,
                    "versions": [h["version"] for h in spec.get("history", [])]})
    return out


def load_saved(store: RunStore, name: str, version: int | None = None) -> dict[str, Any]:
    """The draft of a saved pipeline (its latest version, or ``version``)."""
    found = store.get_pipeline(name)
    if found is None:
        raise DraftError(f"no saved pipeline {name!r}")
    spec = dict(found.spec or {})
    if "draft" not in spec:  # a pipeline saved as a bare spec
        return draft_from_spec(spec)
    if version is None or int(version) == spec.get("version"):
        return normalize_draft(spec["draft"])
    for entry in spec.get("history", []):
        if entry.get("version") == int(version):
            return normalize_draft(entry["draft"])
    raise DraftError(f"pipeline {name!r} has no version {version} (kept: "
                     f"{[h['version'] for h in spec.get('history', [])]})")


def pipeline_choices(store: RunStore) -> list[tuple[str, str]]:
    """Pipelines a run can use, as ``(label, value)``: the presets by name, then the valid
    saved pipelines by the file of their latest version."""
    choices = [(f"{name} (preset)", name) for name in presets()]
    for p in saved_pipelines(store):
        if p["valid"] and p["file"]:
            choices.append((f"{p['name']} v{p['version']} (saved)", p["file"]))
    return choices


# ------------------------------------------------------------------------ try it
def sample_files() -> list[str]:
    """Data files a short run can read: the bundled samples, then JSON/JSONL files the
    workspace's ``data`` folder holds."""
    files = sorted(str(p) for p in SAMPLE_DATA_DIR.iterdir()
                   if p.suffix in (".json", ".jsonl") and p.is_file())
    data = memfactory_home() / "data"
    if data.is_dir():
        files += sorted(str(p) for p in data.rglob("*") if p.suffix in (".json", ".jsonl"))
    return files


def check_sample(path: str) -> str:
    """``path`` when it is one of :func:`sample_files` (nothing else on the disk)."""
    resolved = str(Path(path).expanduser().resolve()) if path else ""
    allowed = {str(Path(p).resolve()) for p in sample_files()}
    if resolved not in allowed:
        raise DraftError(f"{path!r} is not a sample: choose a bundled sample or a file in "
                         f"{memfactory_home() / 'data'}")
    return resolved


def try_config(draft: dict[str, Any], model: str, sample: str, docs: int | None = None,
               sample_index: int = 0) -> dict[str, Any]:
    """An evaluation config that runs a valid draft on one question of ``sample``. The
    pipeline is written to the workspace under a name derived from its content."""
    checked = check_draft(draft)
    if not checked["ok"]:
        raise DraftError("fix the pipeline first:\n" + problems_text(checked))
    text = draft_yaml(draft)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = pipelines_dir() / "_tried"
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"{check_name(draft['name'])}-{digest}.yaml"
    file.write_text(text, encoding="utf-8")
    data: dict[str, Any] = {"path": check_sample(sample), "limit": int(sample_index) + 1}
    if docs:
        data["docs"] = int(docs)
    return {"pipeline": str(file), "model": (model or "").strip() or "tiny-random",
            "data": data, "batch_size": 1, "output_dir": "pending"}
