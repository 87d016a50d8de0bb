"""A tab whose form is generated from a run config model (the Train and Evaluate tabs): one
input per field of the model, grouped by its nested models, the equivalent YAML and
``memfactory submit`` line shown live, and a Submit button that queues the run and opens
it in Runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import gradio as gr
from pydantic import BaseModel

from app import config_forms as forms
from app.pipeline_drafts import pipeline_choices, sample_files
from app.services import config_presets, preset_config, submit_config
from memfactory_core.errors import MemFactoryError
from memfactory_core.paths import memfactory_home

UPLOAD_LIMIT = 2 << 30
"""Largest data file an upload may hold (bytes)."""

GROUP_TITLES = {"pipeline": "Pipeline", "model": "Model", "data": "Data",
                "generation": "Generation", "lora": "LoRA", "rewards": "Rewards"}


def upload_dir() -> Path:
    """Where uploaded data files are kept (inside the workspace)."""
    path = memfactory_home() / "data" / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def keep_upload(temp_path: str | None) -> str:
    """Copy an uploaded file into the workspace's ``data/uploads``; returns its path there.
    The name keeps only letters, digits, ``.``, ``_`` and ``-``."""
    if not temp_path:
        raise MemFactoryError("no file was uploaded")
    src = Path(temp_path)
    if src.stat().st_size > UPLOAD_LIMIT:
        raise MemFactoryError(f"{src.name}: larger than {UPLOAD_LIMIT >> 30} GB")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", src.name).lstrip(".") or "upload"
    dest = upload_dir() / name
    shutil.copyfile(src, dest)
    return str(dest)


def section(field: dict[str, Any]) -> str:
    """Which box of the form a field goes into."""
    path = field["path"]
    if path.startswith("pipeline") or path in ("roles", "trained_roles"):
        return "pipeline"
    if path == "rewards":
        return "rewards"
    return field["group"]


def _data_choices() -> list[str]:
    files = sample_files()
    uploads = upload_dir()
    files += sorted(str(p) for p in uploads.iterdir() if p.is_file() and str(p) not in files)
    return files


def _component(field: dict[str, Any], store: Any) -> gr.components.Component:
    label = field["path"] + (" *" if field["required"] else "")
    info = field["description"] or None
    common: dict[str, Any] = {"label": label, "info": info,
                              "elem_id": "cfg-" + field["path"].replace(".", "-").replace(
                                  "_", "-")}
    path, kind = field["path"], field["kind"]
    if path == "pipeline":
        return gr.Dropdown(pipeline_choices(store), allow_custom_value=True, **common)
    if path == "model.model":
        from memfactory_core.llm.models import builtin_model_names

        return gr.Dropdown(builtin_model_names(), allow_custom_value=True, **common)
    if path in ("data.path", "data.exclude"):
        return gr.Dropdown(_data_choices(), allow_custom_value=True, **common)
    if kind == "enum":
        return gr.Dropdown(field["options"], value=field.get("default"), **common)
    if kind == "boolean":
        return gr.Checkbox(bool(field.get("default")), **common)
    if kind in ("integer", "number"):
        bounds = {k: field[k] for k in ("minimum", "maximum") if k in field}
        return gr.Number(field.get("default"), precision=0 if kind == "integer" else None,
                         **bounds, **common)
    if kind == "json":
        default = field.get("default")
        return gr.Textbox("" if default is None else forms.json.dumps(default), lines=1,
                          max_lines=8, **common)
    return gr.Textbox(field.get("default") or "", **common)


def _form_value(field: dict[str, Any], value: Any) -> Any:
    """A config value as its input shows it."""
    if field["kind"] == "json":
        return "" if value is None else forms.json.dumps(value)
    if field["kind"] == "text" and value is None:
        return ""
    return value


def create_config_tab(ctx: Any, kind: str, model: type[BaseModel], tab_id: str) -> dict[str, Any]:
    """Build the form of ``model`` inside the current tab; returns its components."""
    store = ctx.store
    fields = forms.form_fields(model)
    presets = config_presets(kind)
    first = next((n for n in presets if "tiny" in n), presets[0] if presets else None)
    with gr.Row():
        preset = gr.Dropdown(presets, value=None, label="Start from a shipped config",
                             scale=3, elem_id=f"{tab_id}-preset")
        name = gr.Textbox(label="Run name (optional)", scale=2, elem_id=f"{tab_id}-name")
        refresh_btn = gr.Button("Refresh pipelines and data", scale=1,
                                elem_id=f"{tab_id}-refresh")
    inputs: dict[str, gr.components.Component] = {}
    order: list[str] = []
    for f in fields:
        if section(f) not in order:
            order.append(section(f))
    order.sort(key=lambda s: (s == "settings", s != "pipeline"))
    with gr.Row():
        with gr.Column(scale=3):
            for box in order:
                title = GROUP_TITLES.get(box, "Training settings (TRL GRPOConfig names)"
                                         if kind == "train" else "Settings")
                with gr.Accordion(title, open=box in ("pipeline", "model", "data")):
                    with gr.Row(equal_height=False):
                        for f in [f for f in fields if section(f) == box]:
                            inputs[f["path"]] = _component(f, store)
                    if box == "data":
                        upload = gr.UploadButton("Upload a data file (kept in the workspace)",
                                                 file_count="single", size="sm",
                                                 elem_id=f"{tab_id}-upload")
        with gr.Column(scale=2):
            problems = gr.Markdown("", elem_id=f"{tab_id}-problems")
            cli = gr.Code("", language="shell", label="Command line", interactive=False,
                          lines=2, elem_id=f"{tab_id}-cli")
            yaml_box = gr.Code("", language="yaml", label="Config (YAML)", interactive=False,
                               lines=18, elem_id=f"{tab_id}-yaml")
            submit = gr.Button(f"Submit {kind} run", variant="primary",
                               elem_id=f"{tab_id}-submit")
            message = gr.Markdown("", elem_id=f"{tab_id}-message")
    base = gr.State({"name": None, "config": {}})
    components = [inputs[f["path"]] for f in fields]

    def current(values: tuple[Any, ...]) -> dict[str, Any]:
        return forms.build_config(fields, dict(zip([f["path"] for f in fields], values,
                                                   strict=True)))

    def render(base_value: dict[str, Any], *values: Any) -> tuple[str, str, str]:
        try:
            config = current(values)
        except MemFactoryError as err:
            return f"**1 problem**\n- {err}", "", ""
        found = forms.check_config(model, config)
        verdict = ("**✓ Valid config.**" if not found else
                   f"**{len(found)} problem(s)**\n" + "\n".join(f"- `{p}`" for p in found))
        line = forms.command_line(kind, config, fields, base_value.get("name"),
                                  base_value.get("config"))
        return verdict, line, forms.config_text(config)

    def load_preset(preset_name: str | None) -> list[Any]:
        if not preset_name:
            return [gr.skip()] * (len(components) + 1)
        try:
            config = preset_config(preset_name)
        except MemFactoryError as err:
            gr.Warning(str(err))
            return [gr.skip()] * (len(components) + 1)
        values = forms.flatten(config, fields)
        updates = [gr.update(value=_form_value(f, values.get(f["path"], f.get("default"))))
                   for f in fields]
        return [{"name": preset_name, "config": config}, *updates]

    def on_upload(file: Any) -> Any:
        try:
            kept = keep_upload(getattr(file, "name", file))
        except (MemFactoryError, OSError) as err:
            gr.Warning(str(err))
            return gr.skip()
        gr.Info(f"Kept as {kept}")
        return gr.update(choices=_data_choices(), value=kept)

    def on_refresh() -> list[Any]:
        return [gr.update(choices=pipeline_choices(store)),
                gr.update(choices=_data_choices())]

    quiet: dict[str, Any] = {"show_progress": "hidden", "api_visibility": "private"}
    gr.on([c.change for c in components], render, [base, *components],
          [problems, cli, yaml_box], trigger_mode="always_last", **quiet)
    render_io = ([base, *components], [problems, cli, yaml_box])
    preset.input(load_preset, preset, [base, *components], **quiet).then(
        render, *render_io, **quiet)
    upload.upload(on_upload, upload, inputs["data.path"], **quiet)
    refresh_btn.click(on_refresh, None, [inputs["pipeline"], inputs["data.path"]], **quiet)
    ctx.demo.load(lambda: (gr.update(value=first), *load_preset(first)), None,
                  [preset, base, *components], **quiet).then(render, *render_io, **quiet)
    parts = {"preset": preset, "name": name, "inputs": inputs, "problems": problems,
             "cli": cli, "yaml": yaml_box, "submit": submit, "message": message}

    def wire_submit() -> None:
        targets = ctx.open_run_outputs()

        def on_submit(run_name: str | None, *values: Any) -> list[Any]:
            skip = [gr.skip()] * len(targets)
            try:
                run = submit_config(store, kind, current(values), name=run_name or None)
            except MemFactoryError as err:
                return [f"**Not submitted.**\n\n```\n{err}\n```", *skip]
            return [f"Queued {kind} run **#{run.id}**; it is selected in Runs.",
                    *ctx.open_run(run.id)]

        submit.click(on_submit, [name, *components], [message, *targets],
                     api_visibility="private")

    ctx.on_ready(wire_submit)
    return parts
