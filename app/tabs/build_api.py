"""The Build tab's named API endpoints: the catalog, validation, the same edits the builder's
buttons make, YAML export and import, saved versions and "Try it". Drafts travel as JSON
text (``draft_json``); every endpoint that changes one returns ``{"draft", "check"}``."""

# No ``from __future__ import annotations`` here: gr.api reads the endpoints' annotations
# as objects to describe them.

import json
from typing import TYPE_CHECKING, Any

import gradio as gr

from app import pipeline_drafts as drafts
from app.services import last_record, parse_run_id, run_record, submit_config
from app.tabs.build import default_sample
from app.trace_view import trace_html
from memfactory_core.errors import MemFactoryError

if TYPE_CHECKING:
    from app.context import AppContext


def _fail(err: Exception) -> gr.Error:
    return gr.Error(str(err), print_exception=False)


def _draft(draft_json: str) -> dict[str, Any]:
    try:
        return drafts.normalize_draft(draft_json or "{}")
    except MemFactoryError as err:
        raise _fail(err) from None


def _answer(draft: dict[str, Any], slot: str | None = None) -> dict[str, Any]:
    return {"draft": draft, "check": drafts.check_draft(draft), "slot": slot}


def register_api(ctx: "AppContext") -> None:
    store = ctx.store

    def pipeline_catalog() -> dict[str, Any]:
        """Components by lifecycle stage with their ports, roles and form fields, and the
        memory types."""
        return {"palette": drafts.palette(), "memory": drafts.memory_types()}

    def validate_pipeline(draft_json: str) -> dict[str, Any]:
        """Every problem of a draft (or spec) with its lane, slot id and parameter."""
        return drafts.check_draft(_draft(draft_json))

    def pipeline_add(draft_json: str, lane: str, component: str,
                     index: int | None = None) -> dict[str, Any]:
        """Add ``component`` to ``lane`` (ingest | query) at ``index`` (default: end)."""
        try:
            draft, sid = drafts.add_slot(_draft(draft_json), lane, component, index)
        except MemFactoryError as err:
            raise _fail(err) from None
        return _answer(draft, sid)

    def pipeline_move(draft_json: str, slot: str, lane: str, index: int) -> dict[str, Any]:
        """Move slot ``slot`` (its id) to ``lane`` at ``index``."""
        try:
            return _answer(drafts.move_slot(_draft(draft_json), slot, lane, index), slot)
        except MemFactoryError as err:
            raise _fail(err) from None

    def pipeline_remove(draft_json: str, slot: str) -> dict[str, Any]:
        """Remove slot ``slot`` (its id)."""
        try:
            return _answer(drafts.remove_slot(_draft(draft_json), slot))
        except MemFactoryError as err:
            raise _fail(err) from None

    def pipeline_set_params(draft_json: str, slot: str, params_json: str,
                            role: str | None = None) -> dict[str, Any]:
        """Replace slot ``slot``'s parameters (a JSON object) and role."""
        try:
            params = json.loads(params_json or "{}")
        except json.JSONDecodeError as err:
            raise gr.Error(f"params_json: not valid JSON: {err}") from None
        try:
            return _answer(drafts.set_slot(_draft(draft_json), slot, params, role), slot)
        except MemFactoryError as err:
            raise _fail(err) from None

    def pipeline_yaml(draft_json: str) -> str:
        """The draft as deterministic YAML (loads in ``memfactory eval`` unchanged)."""
        return drafts.draft_yaml(_draft(draft_json))

    def pipeline_from_yaml(yaml_text: str) -> dict[str, Any]:
        """A draft of a pipeline YAML text, checked."""
        try:
            return _answer(drafts.draft_from_yaml(yaml_text, "pipeline YAML"))
        except MemFactoryError as err:
            raise _fail(err) from None

    def save_pipeline(draft_json: str) -> dict[str, Any]:
        """Save the draft as the next version of its name; returns name, version, validity
        and the version's file."""
        try:
            record = drafts.save_draft(store, _draft(draft_json))
        except MemFactoryError as err:
            raise _fail(err) from None
        return {"name": record["draft"]["name"], "version": record["version"],
                "valid": record["valid"], "file": record["file"]}

    def list_pipelines() -> list[dict[str, Any]]:
        """Saved pipelines with their latest version and the versions kept."""
        return drafts.saved_pipelines(store)

    def load_pipeline(name: str, version: int | None = None) -> dict[str, Any]:
        """A saved pipeline's draft (latest version, or ``version``), checked."""
        try:
            return _answer(drafts.load_saved(store, name, version))
        except MemFactoryError as err:
            raise _fail(err) from None

    def try_pipeline(draft_json: str, model: str = "tiny-random", sample: str = "",
                     docs: int | None = 2) -> dict[str, Any]:
        """Queue a one-question evaluation run of a valid draft on a sample file (default:
        the bundled HotpotQA sample); ``docs``: documents per HotpotQA question. Returns the
        run."""
        try:
            config = drafts.try_config(_draft(draft_json), model,
                                       sample or default_sample(drafts.sample_files()) or "",
                                       docs)
            run = submit_config(store, "eval", config, name="try", tags=["try"])
        except MemFactoryError as err:
            raise _fail(err) from None
        return run_record(run)

    def run_trace(run_id: int) -> dict[str, Any]:
        """Where a run stands and, once it succeeded, its last evaluation record's trace
        (as data and as the viewer's HTML)."""
        try:
            state = last_record(store, parse_run_id(run_id))
        except MemFactoryError as err:
            raise _fail(err) from None
        record = state.pop("record")
        state["trace"] = record.get("trace") if record else None
        state["html"] = trace_html(state["trace"], record) if record else ""
        return state

    for fn in (pipeline_catalog, validate_pipeline, pipeline_add, pipeline_move,
               pipeline_remove, pipeline_set_params, pipeline_yaml, pipeline_from_yaml,
               save_pipeline, list_pipelines, load_pipeline, try_pipeline, run_trace):
        ctx.api(fn)
