"""The Build tab: a drag-and-drop pipeline builder (palette -> ingest and query lanes) with
parameter forms, validation on every edit, presets, import / export, saved versions, and
"Try it" (a one-question background run whose trace is shown step by step).

The drag-and-drop widget is a ``gr.HTML`` running ``assets/static/builder.js`` with
SortableJS (vendored under ``assets/vendor``, served by the app). The buttons under it do
the same edits without a mouse. Every edit goes through :mod:`app.pipeline_drafts`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from app import pipeline_drafts as drafts
from app.services import last_record, submit_config
from app.trace_view import trace_html, trace_viewer
from jobs.store import RunNotFound, RunStore
from memfactory_core.errors import MemFactoryError

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
BUILDER_JS = ASSETS / "static" / "builder.js"
BUILDER_CSS = ASSETS / "static" / "builder.css"
SORTABLE_JS = ASSETS / "vendor" / "sortablejs" / "Sortable.min.js"
TRY_REFRESH_S = 1.0

TEMPLATE = """<div class="mfb">
  <div class="mfb-palette"></div>
  <div class="mfb-main">
    <div class="mfb-memory" title="Click to edit the memory's parameters">
      <b>Memory</b> <select class="mfb-memtype" aria-label="Memory type"></select></div>
    <h4>Ingest lane <small>applied to each unit of the stream</small></h4>
    <div class="mfb-lane" data-lane="ingest"></div>
    <h4>Query lane <small>applied to each question</small></h4>
    <div class="mfb-lane" data-lane="query"></div>
    <div class="mfb-trash">drop a slot here to remove it</div>
    <div class="mfb-problems"></div>
  </div>
  <div class="mfb-form"></div>
</div>"""


def static_url(path: Path) -> str:
    """The URL the app serves a file of ``assets/static`` or ``assets/vendor`` at."""
    return f"/gradio_api/file={path.resolve()}"


def widget_catalog() -> dict[str, Any]:
    """What the widget draws its palette, memory selector and forms from."""
    return {"palette": drafts.palette(), "memory": drafts.memory_types()}


def view_value(draft: dict[str, Any], checked: dict[str, Any], selected: str | None,
               rev: int) -> str:
    """The widget's value: the draft, its check and the selected slot."""
    return json.dumps({"draft": draft, "check": checked, "selected": selected, "rev": rev})


def slot_choices(draft: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{lane}[{i}] {s['component']} ({s['id']})", s["id"])
            for lane in drafts.LANES for i, s in enumerate(draft[lane])]


def status_markdown(checked: dict[str, Any]) -> str:
    """The validation verdict under the builder, one problem per line with its place."""
    if checked["ok"]:
        roles = ", ".join(checked.get("roles") or []) or "none"
        return f"**✓ Valid pipeline.** Roles: {roles}."
    lines = [f"**{len(checked['problems'])} problem(s)**"]
    lines += [f"- `{p['location'] or 'pipeline'}` {p['message']}" for p in checked["problems"]]
    return "\n".join(lines)


def register(ctx: Any) -> None:
    """Build the tab inside the current ``gr.Tab``; register its poller and endpoints."""
    from app.tabs.build_api import register_api

    store: RunStore = ctx.store
    start = drafts.preset_draft("memagent") if "memagent" in drafts.presets() else (
        drafts.new_draft())
    start_check = drafts.check_draft(start)
    catalog = widget_catalog()
    model_names = _model_names()
    samples = drafts.sample_files()

    with gr.Row():
        name = gr.Textbox(start["name"], label="Pipeline name", scale=2, elem_id="build-name")
        preset = gr.Dropdown(drafts.presets(), value=None, label="Preset", scale=2,
                             elem_id="build-preset")
        saved = gr.Dropdown(_saved_choices(store), value=None, label="Saved pipelines",
                            scale=2, elem_id="build-saved")
        with gr.Column(scale=1, min_width=140):
            save_btn = gr.Button("Save version", variant="primary", elem_id="build-save")
            new_btn = gr.Button("Empty canvas", elem_id="build-new")
    builder = gr.HTML(
        view_value(start, start_check, None, 0), html_template=TEMPLATE,
        css_template=BUILDER_CSS.read_text(encoding="utf-8"),
        js_on_load=BUILDER_JS.read_text(encoding="utf-8"),
        head=f'<script src="{static_url(SORTABLE_JS)}"></script>',
        catalog=json.dumps(catalog), elem_id="builder",
    )
    status = gr.Markdown(status_markdown(start_check), elem_id="build-status")
    with gr.Accordion("Edit without a mouse", open=False, elem_id="build-buttons"):
        with gr.Row():
            component = gr.Dropdown([c["name"] for c in catalog["palette"]], label="Component",
                                    elem_id="build-component")
            lane = gr.Radio(list(drafts.LANES), value="ingest", label="Lane",
                            elem_id="build-lane")
            add_btn = gr.Button("Add to lane", elem_id="build-add")
        with gr.Row():
            slot = gr.Dropdown(slot_choices(start), label="Slot", elem_id="build-slot")
            up_btn = gr.Button("Move up", elem_id="build-up")
            down_btn = gr.Button("Move down", elem_id="build-down")
            other_btn = gr.Button("To the other lane", elem_id="build-other-lane")
            remove_btn = gr.Button("Remove", variant="stop", elem_id="build-remove")
        with gr.Row():
            params_box = gr.Code("{}", language="json", label="Slot parameters (JSON)",
                                 interactive=True, lines=4, elem_id="build-params")
            role_box = gr.Textbox(label="Role (LLM components)", elem_id="build-role")
            memory_type = gr.Dropdown([m["type"] for m in catalog["memory"]],
                                      value=start["memory"]["type"], label="Memory type",
                                      elem_id="build-memory-type")
        apply_btn = gr.Button("Apply parameters", elem_id="build-apply")
    with gr.Accordion("YAML: export and import", open=False, elem_id="build-yaml-box"):
        yaml_box = gr.Code(drafts.draft_yaml(start), language="yaml", interactive=True,
                           lines=14, label="Pipeline YAML (edit, then Import)",
                           elem_id="build-yaml")
        with gr.Row():
            import_btn = gr.Button("Import YAML", elem_id="build-import")
            export_btn = gr.DownloadButton("Export YAML file", elem_id="build-export")
    with gr.Accordion("Try it on one sample", open=True, elem_id="build-try-box"):
        with gr.Row():
            try_model = gr.Dropdown(model_names, value=model_names[0] if model_names else None,
                                    allow_custom_value=True, label="Model", scale=2,
                                    elem_id="build-try-model")
            try_sample = gr.Dropdown(samples, value=default_sample(samples),
                                     label="Sample file", scale=3, elem_id="build-try-sample")
            try_docs = gr.Number(2, precision=0, minimum=1,
                                 label="Documents per question (HotpotQA; empty: its own)",
                                 scale=1, elem_id="build-try-docs")
            try_btn = gr.Button("Try it", variant="primary", scale=1, elem_id="build-try")
        try_status = gr.Markdown("", elem_id="build-try-status")
        trace = trace_viewer(elem_id="build-trace")
    draft_state = gr.State(start)
    rev = gr.State(0)
    try_run = gr.State(None)
    memo = gr.BrowserState(None, storage_key="memfactory-builder-draft")
    try_timer = ctx.poller("build", gr.Timer(TRY_REFRESH_S, active=False))

    edit_outputs = [draft_state, rev, builder, status, yaml_box, slot, name, memory_type, memo]

    def present(draft: dict[str, Any], selected: str | None, counter: int) -> list[Any]:
        checked = drafts.check_draft(draft)
        counter += 1
        return [draft, counter, view_value(draft, checked, selected, counter),
                status_markdown(checked), drafts.draft_yaml(draft),
                gr.update(choices=slot_choices(draft),
                          value=selected if selected in {s["id"] for ln in drafts.LANES
                                                         for s in draft[ln]} else None),
                draft["name"], draft["memory"]["type"], json.dumps(draft)]

    def keep(counter: int, message: str) -> list[Any]:
        gr.Warning(message)
        return [gr.skip()] * len(edit_outputs)

    def on_edit(counter: int, evt: gr.EventData) -> list[Any]:
        data = evt._data or {}
        try:
            draft = drafts.normalize_draft(data.get("draft") or "{}")
        except MemFactoryError as err:
            return keep(counter, str(err))
        return present(draft, data.get("selected"), counter)

    def on_name(draft: dict[str, Any], new_name: str, counter: int) -> list[Any]:
        return present({**draft, "name": new_name}, None, counter)

    def on_memory_type(draft: dict[str, Any], kind: str, counter: int) -> list[Any]:
        if kind == draft["memory"]["type"]:
            return [gr.skip()] * len(edit_outputs)
        return present({**draft, "memory": {"type": kind, "params": {}}}, "memory", counter)

    def on_add(draft: dict[str, Any], comp: str | None, lane_name: str,
               counter: int) -> list[Any]:
        if not comp:
            return keep(counter, "Choose a component to add.")
        try:
            draft, sid = drafts.add_slot(draft, lane_name, comp)
        except MemFactoryError as err:
            return keep(counter, str(err))
        return present(draft, sid, counter)

    def mover(step: int | None) -> Any:
        def move(draft: dict[str, Any], sid: str | None, counter: int) -> list[Any]:
            if not sid:
                return keep(counter, "Choose a slot first.")
            try:
                at_lane, i = drafts.find_slot(draft, sid)
                if step is None:
                    target = "query" if at_lane == "ingest" else "ingest"
                    draft = drafts.move_slot(draft, sid, target, len(draft[target]))
                else:
                    draft = drafts.move_slot(draft, sid, at_lane, max(0, i + step))
            except MemFactoryError as err:
                return keep(counter, str(err))
            return present(draft, sid, counter)
        return move

    def on_remove(draft: dict[str, Any], sid: str | None, counter: int) -> list[Any]:
        if not sid:
            return keep(counter, "Choose a slot first.")
        try:
            draft = drafts.remove_slot(draft, sid)
        except MemFactoryError as err:
            return keep(counter, str(err))
        return present(draft, None, counter)

    def on_slot(draft: dict[str, Any], sid: str | None) -> tuple[str, str]:
        if not sid:
            return "{}", ""
        try:
            at_lane, i = drafts.find_slot(draft, sid)
        except MemFactoryError:
            return "{}", ""
        s = draft[at_lane][i]
        return json.dumps(s.get("params") or {}, indent=1), s.get("role") or ""

    def on_apply(draft: dict[str, Any], sid: str | None, text: str, role: str,
                 counter: int) -> list[Any]:
        try:
            params = json.loads(text or "{}")
        except json.JSONDecodeError as err:
            return keep(counter, f"slot parameters: not valid JSON: {err}")
        try:
            if sid:
                draft = drafts.set_slot(draft, sid, params, role)
            else:
                if not isinstance(params, dict):
                    raise drafts.DraftError("memory parameters must be a JSON object")
                draft = {**draft, "memory": {**draft["memory"], "params": params}}
        except MemFactoryError as err:
            return keep(counter, str(err))
        return present(draft, sid or "memory", counter)

    def on_preset(preset_name: str | None, counter: int) -> list[Any]:
        if not preset_name:
            return [gr.skip()] * len(edit_outputs)
        try:
            return present(drafts.preset_draft(preset_name), None, counter)
        except MemFactoryError as err:
            return keep(counter, str(err))

    def on_saved(name_value: str | None, counter: int) -> list[Any]:
        if not name_value:
            return [gr.skip()] * len(edit_outputs)
        try:
            return present(drafts.load_saved(store, name_value), None, counter)
        except MemFactoryError as err:
            return keep(counter, str(err))

    def on_new(counter: int) -> list[Any]:
        return present(drafts.new_draft(), None, counter)

    def on_import(text: str, counter: int) -> list[Any]:
        try:
            return present(drafts.draft_from_yaml(text or "", "imported YAML"), None, counter)
        except MemFactoryError as err:
            return keep(counter, str(err))

    def on_save(draft: dict[str, Any]) -> Any:
        try:
            record = drafts.save_draft(store, draft)
        except MemFactoryError as err:
            gr.Warning(str(err))
            return gr.skip()
        note = "" if record["valid"] else " (it has problems: runs accept it once fixed)"
        gr.Info(f"Saved {draft['name']} version {record['version']}{note}.")
        return gr.update(choices=_saved_choices(store), value=draft["name"])

    def on_export(draft: dict[str, Any]) -> str:
        folder = drafts.pipelines_dir() / "_exported"
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{drafts.check_name(draft['name'])}.yaml"
        out.write_text(drafts.draft_yaml(draft), encoding="utf-8")
        return str(out)

    def on_load(remembered: str | None, counter: int) -> list[Any]:
        if not remembered:
            return [gr.skip()] * len(edit_outputs)
        try:
            return present(drafts.normalize_draft(remembered), None, counter)
        except MemFactoryError:
            return [gr.skip()] * len(edit_outputs)

    def on_try(draft: dict[str, Any], model: str | None, sample: str | None,
               docs: float | None) -> tuple[Any, ...]:
        try:
            config = drafts.try_config(draft, model or "", sample or "",
                                       int(docs) if docs else None)
            run = submit_config(store, "eval", config, name=f"try {draft['name']}",
                                tags=["try"])
        except MemFactoryError as err:
            return (f"**Not started.**\n\n```\n{err}\n```", None, gr.skip(),
                    gr.Timer(active=False))
        return (f"Run **#{run.id}** queued: one question of `{Path(sample or '').name}` "
                f"with `{config['model']}`.", run.id, trace_html(None), gr.Timer(active=True))

    def on_try_tick(run_id: int | None) -> tuple[Any, ...]:
        if run_id is None:
            return gr.skip(), gr.skip(), gr.Timer(active=False)
        try:
            state = last_record(store, int(run_id))
        except RunNotFound:
            return f"Run {run_id} no longer exists.", gr.skip(), gr.Timer(active=False)
        if not state["final"]:
            return f"Run **#{run_id}** is {state['status']}…", gr.skip(), gr.skip()
        record = state["record"]
        if record is None:
            return (f"Run **#{run_id}** {state['status']}: `{state['error'] or 'no record'}` "
                    "(its log is in Runs).", gr.skip(), gr.Timer(active=False))
        return (f"Run **#{run_id}** finished.",
                trace_html(record.get("trace"), record, title=f"Trace of run #{run_id}"),
                gr.Timer(active=False))

    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    builder.edit(on_edit, [rev], edit_outputs, trigger_mode="always_last", **quiet)
    name.submit(on_name, [draft_state, name, rev], edit_outputs, **quiet)
    name.blur(on_name, [draft_state, name, rev], edit_outputs, **quiet)
    memory_type.input(on_memory_type, [draft_state, memory_type, rev], edit_outputs, **quiet)
    add_btn.click(on_add, [draft_state, component, lane, rev], edit_outputs, **quiet)
    up_btn.click(mover(-1), [draft_state, slot, rev], edit_outputs, **quiet)
    down_btn.click(mover(1), [draft_state, slot, rev], edit_outputs, **quiet)
    other_btn.click(mover(None), [draft_state, slot, rev], edit_outputs, **quiet)
    remove_btn.click(on_remove, [draft_state, slot, rev], edit_outputs, **quiet)
    slot.change(on_slot, [draft_state, slot], [params_box, role_box], **quiet)
    apply_btn.click(on_apply, [draft_state, slot, params_box, role_box, rev], edit_outputs,
                    **quiet)
    preset.input(on_preset, [preset, rev], edit_outputs, **quiet)
    saved.input(on_saved, [saved, rev], edit_outputs, **quiet)
    new_btn.click(on_new, [rev], edit_outputs, **quiet)
    import_btn.click(on_import, [yaml_box, rev], edit_outputs, **quiet)
    save_btn.click(on_save, [draft_state], [saved], **quiet)
    export_btn.click(on_export, [draft_state], [export_btn], **quiet)
    try_btn.click(on_try, [draft_state, try_model, try_sample, try_docs],
                  [try_status, try_run, trace, try_timer], **quiet)
    try_timer.tick(on_try_tick, [try_run], [try_status, trace, try_timer], **quiet)
    ctx.demo.load(on_load, [memo, rev], edit_outputs, **quiet)
    ctx.demo.load(lambda: gr.update(choices=_saved_choices(store)), None, [saved], **quiet)
    ctx.shared["build"] = {"builder": builder, "draft": draft_state, "trace": trace}
    register_api(ctx)


def _saved_choices(store: RunStore) -> list[tuple[str, str]]:
    return [(f"{p['name']} (v{p['version']}{'' if p['valid'] else ', has problems'})",
             p["name"]) for p in drafts.saved_pipelines(store)]


def default_sample(samples: list[str]) -> str | None:
    """The bundled HotpotQA sample when there is one (MemAgent, the first preset, reads
    documents), else the first sample."""
    return next((f for f in samples if "hotpotqa" in Path(f).name), samples[0] if samples
                else None)


def _model_names() -> list[str]:
    from memfactory_core.llm.models import builtin_model_names

    return builtin_model_names()
