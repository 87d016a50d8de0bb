"""The Build tab's logic without a browser: drafts and their edits, located validation
problems, deterministic YAML, saved versions, forms from JSON schemas and config models,
the trace viewer, and run ids from untrusted input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from app import config_forms as forms
from app import pipeline_drafts as drafts
from app.services import BadRunId, parse_run_id, preset_config, run_record
from app.trace_view import trace_html, word_diff_html
from jobs.store import RunStore
from memfactory_core.components.base import Component, StepResult, register, registry
from memfactory_core.config import validate_config
from memfactory_core.eval.config import EvalConfig
from memfactory_core.pipeline import load_spec, validate_spec
from memfactory_core.training.config import TrainConfig


class ProbeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Keep facts above this score.")
    mode: Literal["strict", "loose"] = "strict"
    keep_all: bool = False
    limit: int | None = Field(None, ge=1, description="Most facts kept.")
    tags: list[str] = Field(default_factory=list)


def probe_component() -> type[Component]:
    """A component class the builder has never seen."""
    from memfactory_core.components.base import Stage

    class ProbeFilter(Component):
        name = "probe_filter"
        stage = Stage.EXTRACT
        description = "Keeps the facts of a chunk that pass a threshold."
        Params = ProbeParams
        inputs = ("chunk",)
        outputs = ("facts",)

        def run(self, batch: list[Any]) -> list[StepResult]:
            return [StepResult(output=[]) for _ in batch]

    return ProbeFilter


@pytest.fixture()
def new_component() -> Iterator[type[Component]]:
    from memfactory_core.components import base

    cls = register(probe_component())
    try:
        yield cls
    finally:
        base._REGISTRY.pop(cls.name, None)


#: a "billion laughs" YAML: 9 levels of 10 aliases each expand to 10**9 values
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
    for i in range(8))


@pytest.fixture()
def store(tmp_path: Path) -> RunStore:
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


def memagent() -> dict[str, Any]:
    return drafts.preset_draft("memagent")


# ------------------------------------------------------------------------- drafts
def test_preset_draft_has_stable_ids_and_checks_clean() -> None:
    draft = memagent()
    assert [s["id"] for s in draft["ingest"]] == ["token_chunker", "memory_writer"]
    assert [s["id"] for s in draft["query"]] == ["boxed_answerer"]
    assert drafts.check_draft(draft)["ok"]
    assert drafts.preset_draft("memagent") == draft  # the same file gives the same ids


def test_edits_keep_ids_and_build_memagent_from_empty() -> None:
    draft = drafts.new_draft("built")
    draft, writer = drafts.add_slot(draft, "ingest", "memory_writer")
    draft, chunker = drafts.add_slot(draft, "ingest", "token_chunker")
    draft, _ = drafts.add_slot(draft, "query", "boxed_answerer")
    draft, extra = drafts.add_slot(draft, "query", "memory_writer")
    assert extra == "memory_writer_2"
    checked = drafts.check_draft(draft)
    assert not checked["ok"]
    draft = drafts.move_slot(draft, chunker, "ingest", 0)
    draft = drafts.remove_slot(draft, extra)
    assert [s["id"] for s in draft["ingest"]] == [chunker, writer]
    assert drafts.check_draft(draft)["ok"]
    with pytest.raises(drafts.DraftError, match="no slot 'gone'"):
        drafts.remove_slot(draft, "gone")
    with pytest.raises(drafts.DraftError, match="unknown component 'nope'"):
        drafts.add_slot(draft, "ingest", "nope")
    with pytest.raises(drafts.DraftError, match="unknown lane"):
        drafts.move_slot(draft, chunker, "middle", 0)


def test_order_lanes_is_what_a_drag_reports() -> None:
    draft = memagent()
    moved = drafts.order_lanes(draft, {"ingest": ["memory_writer", "token_chunker"],
                                       "query": ["boxed_answerer"]})
    assert [s["id"] for s in moved["ingest"]] == ["memory_writer", "token_chunker"]
    removed = drafts.order_lanes(draft, {"ingest": ["token_chunker", "memory_writer"],
                                         "query": []})
    assert removed["query"] == []
    with pytest.raises(drafts.DraftError, match="unknown slot ids"):
        drafts.order_lanes(draft, {"ingest": ["ghost"]})


def test_problems_name_lane_slot_and_parameter() -> None:
    draft = drafts.set_slot(memagent(), "boxed_answerer", {"max_new_tokens": 0}, "policy")
    draft = drafts.move_slot(draft, "memory_writer", "ingest", 0)
    checked = drafts.check_draft(draft)
    assert not checked["ok"]
    bad_param = [p for p in checked["problems"] if p["param"] == "max_new_tokens"]
    assert bad_param and bad_param[0]["slot"] == "boxed_answerer"
    assert bad_param[0]["lane"] == "query" and bad_param[0]["index"] == 0
    assert "greater than or equal to 1" in bad_param[0]["message"]
    order = [p for p in checked["problems"] if p["slot"] == "memory_writer"]
    assert order and order[0]["index"] == 0 and "segmenter" in order[0]["message"]
    fixed = drafts.set_slot(drafts.move_slot(draft, "token_chunker", "ingest", 0),
                            "boxed_answerer", {"max_new_tokens": 8}, "policy")
    assert drafts.check_draft(fixed)["ok"]


def test_memory_problems_point_at_the_memory() -> None:
    draft = memagent()
    draft["memory"]["params"]["max_tokens"] = -3
    problem = drafts.check_draft(draft)["problems"][0]
    assert problem["lane"] == "memory" and problem["param"] == "max_tokens"


def test_untrusted_drafts_get_clear_errors() -> None:
    with pytest.raises(drafts.DraftError, match="not valid JSON"):
        drafts.normalize_draft("{oops")
    with pytest.raises(drafts.DraftError, match="must be a mapping"):
        drafts.normalize_draft("[1, 2]")
    with pytest.raises(drafts.DraftError, match=r"ingest: a lane must be a list"):
        drafts.normalize_draft({"ingest": "token_chunker"})
    twice = drafts.normalize_draft({"ingest": [{"id": "a", "component": "token_chunker"},
                                               {"id": "a", "component": "memory_writer"}]})
    assert [s["id"] for s in twice["ingest"]] == ["a", "memory_writer"]
    unknown_key = drafts.normalize_draft({**memagent(), "query": [
        {"component": "boxed_answerer", "colour": "red"}]})
    problems = drafts.check_draft(unknown_key)["problems"]
    assert any("colour" in p["location"] for p in problems)  # never dropped silently


# --------------------------------------------------------------------------- YAML
def test_yaml_is_deterministic_and_loads_as_the_preset() -> None:
    draft = memagent()
    text = drafts.draft_yaml(draft)
    assert text == drafts.draft_yaml(drafts.draft_from_yaml(text))
    shuffled = drafts.set_slot(draft, "boxed_answerer",
                               dict(reversed(list({"max_new_tokens": 64,
                                                   "fallback": "text"}.items()))), "policy")
    again = drafts.set_slot(draft, "boxed_answerer",
                            {"fallback": "text", "max_new_tokens": 64}, "policy")
    assert drafts.draft_yaml(shuffled) == drafts.draft_yaml(again)
    exported = validate_spec(yaml.safe_load(text))
    preset = validate_spec(load_spec("memagent"))
    assert exported.spec.model_dump() == preset.spec.model_dump()
    with pytest.raises(drafts.DraftError, match="not valid YAML"):
        drafts.draft_from_yaml("ingest: [", "upload")


# ------------------------------------------------------------------------ storing
def test_save_versions_reload_and_runs_accept_only_valid(store: RunStore) -> None:
    draft = {**memagent(), "name": "mine"}
    first = drafts.save_draft(store, draft)
    changed = drafts.set_slot(draft, "boxed_answerer", {"max_new_tokens": 0}, "policy")
    second = drafts.save_draft(store, changed)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["valid"] and not second["valid"]
    assert Path(second["file"]).name == "v2.yaml" and Path(first["file"]).is_file()
    assert drafts.load_saved(store, "mine") == drafts.normalize_draft(changed)
    assert drafts.load_saved(store, "mine", 1) == drafts.normalize_draft(draft)
    listed = drafts.saved_pipelines(store)
    assert listed[0]["name"] == "mine" and listed[0]["versions"] == [1, 2]
    assert all(v != second["file"] for _, v in drafts.pipeline_choices(store))
    drafts.save_draft(store, draft)
    assert any(v.endswith("mine/v3.yaml") for _, v in drafts.pipeline_choices(store))
    with pytest.raises(drafts.DraftError, match="pipeline name"):
        drafts.save_draft(store, {**draft, "name": "../escape"})
    with pytest.raises(drafts.DraftError, match="no version 9"):
        drafts.load_saved(store, "mine", 9)


def test_try_config_runs_one_question_of_a_sample() -> None:
    samples = drafts.sample_files()
    config = drafts.try_config(memagent(), "tiny-random", samples[0], docs=2)
    assert config["data"] == {"path": str(Path(samples[0]).resolve()), "limit": 1, "docs": 2}
    assert yaml.safe_load(Path(config["pipeline"]).read_text())["name"] == "memagent"
    validate_config(config, EvalConfig)
    with pytest.raises(drafts.DraftError, match="not a sample"):
        drafts.try_config(memagent(), "tiny-random", "/etc/passwd")
    broken = drafts.set_slot(memagent(), "boxed_answerer", {"max_new_tokens": 0}, "policy")
    with pytest.raises(drafts.DraftError, match="fix the pipeline first"):
        drafts.try_config(broken, "tiny-random", samples[0])


# -------------------------------------------------------------------------- forms
def test_palette_and_forms_come_from_the_registry(new_component: type[Component]) -> None:
    palette = {c["name"]: c for c in drafts.palette()}
    assert set(palette) == set(registry())
    entry = palette["probe_filter"]
    assert entry["stage"] == "extract" and entry["inputs"] == ["chunk"]
    fields = {f["name"]: f for f in entry["fields"]}
    assert fields["threshold"]["kind"] == "number"
    assert (fields["threshold"]["minimum"], fields["threshold"]["maximum"]) == (0.0, 1.0)
    assert fields["mode"]["kind"] == "enum" and fields["mode"]["options"] == ["strict", "loose"]
    assert fields["keep_all"]["kind"] == "boolean"
    assert fields["limit"]["kind"] == "integer" and fields["limit"]["nullable"]
    assert fields["tags"]["kind"] == "json"
    stages = [c["stage"] for c in drafts.palette()]
    order = drafts.stage_order()
    assert stages == sorted(stages, key=order.index)


def test_config_forms_round_trip_every_shipped_config() -> None:
    from app.services import config_presets

    for name in config_presets():
        model = TrainConfig if name.startswith("train_") else EvalConfig
        fields = forms.form_fields(model)
        config = preset_config(name)
        rebuilt = forms.build_config(fields, forms.flatten(config, fields))
        assert forms.check_config(model, rebuilt) == [], name
        original = validate_config(config, model).model_dump()
        rebuilt["output_dir"] = config["output_dir"]
        assert validate_config(rebuilt, model).model_dump() == original, name
        assert forms.command_line("x", rebuilt, fields, name, config).split()[3:] == [
            f"assets/configs/{name}"]


def test_config_form_fields_follow_the_model() -> None:
    fields = {f["path"]: f for f in forms.form_fields(TrainConfig)}
    assert set(TrainConfig.model_fields) - {"output_dir", "data", "model", "generation",
                                            "lora"} <= set(fields)
    assert fields["loss_type"]["options"] == ["grpo", "bnpo", "dr_grpo", "dapo"]
    assert fields["generation.temperature"]["default"] == 1.0  # the factory's, not the class's
    assert fields["rewards"]["kind"] == "json"
    assert fields["data.docs"]["kind"] == "json"  # int or list of ints
    values = forms.flatten(preset_config("train_synthetic_tiny.yaml"), list(fields.values()))
    values["learning_rate"] = -1.0
    values["rewards"] = '[{"name": "nope"}]'
    config = forms.build_config(list(fields.values()), values)
    problems = forms.check_config(TrainConfig, config)
    assert any(p.startswith("learning_rate") for p in problems)
    assert any("unknown reward 'nope'" in p for p in problems)
    values["rewards"] = "[{"
    with pytest.raises(Exception, match="rewards: not valid JSON or YAML"):
        forms.build_config(list(fields.values()), values)
    values["rewards"] = ALIAS_BOMB
    with pytest.raises(Exception, match="rewards: not valid JSON or YAML: expands to more"):
        forms.build_config(list(fields.values()), values)


def test_command_line_lists_the_changes() -> None:
    fields = forms.form_fields(EvalConfig)
    base = preset_config("eval_memagent_tiny.yaml")
    values = forms.flatten(base, fields)
    values["data.limit"] = 2
    values["model.model"] = "my model"
    line = forms.command_line("eval", forms.build_config(fields, values), fields,
                              "eval_memagent_tiny.yaml", base)
    assert line == ("memfactory submit eval assets/configs/eval_memagent_tiny.yaml "
                    "'model.model=\"my model\"' data.limit=2")


# -------------------------------------------------------------------- the trace
def test_word_diff_marks_added_and_removed_words() -> None:
    out = word_diff_html("Paris is big", "Paris is <small>")
    assert out == "Paris is <del>big</del><ins>&lt;small&gt;</ins>"
    assert word_diff_html("same", "same") == "same"


def test_trace_html_shows_every_step() -> None:
    trace = {"answer": "Paris", "steps": [
        {"lane": "ingest", "slot": 1, "component": "memory_writer", "role": "policy",
         "unit": 0, "prompt": "read <this>", "output": "notes", "memory_before": "old notes",
         "memory_after": "new notes", "prompt_tokens": 12, "completion_tokens": 3,
         "seconds": 0.25},
        {"lane": "query", "slot": 0, "component": "boxed_answerer", "role": "policy",
         "prompt": "q", "output": "\\boxed{Paris}", "memory_before": "new notes",
         "memory_after": "new notes", "completion_tokens": 4, "seconds": 0.1}]}
    out = trace_html(trace, {"question": "Where?", "answers": ["Paris"], "prediction": "Paris",
                             "em": 1.0})
    assert "memory_writer" in out and "role <b>policy</b>" in out and "unit 0" in out
    assert "read &lt;this&gt;" in out and "12 → 3 tokens" in out and "0.25 s" in out
    assert "<del>old</del><ins>new</ins> notes" in out
    assert "memory unchanged" in out and "em 1.00" in out


# ------------------------------------------------------------------------ run ids
@pytest.mark.parametrize("value,expected", [(3, 3), (3.0, 3), ("7", 7), (" 8 ", 8),
                                            (2**63 - 1, 2**63 - 1)])
def test_run_ids_accepted(value: Any, expected: int) -> None:
    assert parse_run_id(value) == expected


@pytest.mark.parametrize("value", [1.5, "1.5", 2**63, 0, -4, True, None, "abc",
                                   float("nan"), float("inf"), [1]])
def test_run_ids_refused(value: Any) -> None:
    with pytest.raises(BadRunId, match="run id must be"):
        parse_run_id(value)


def test_run_record_carries_no_path_keys(store: RunStore) -> None:
    run = store.create_run("eval", {"data": {"path": "/data.jsonl"}})
    store.update_run(run.id, summary={"config": {"data": {"path": "/data.jsonl"}}})
    record = run_record(store.get_run(run.id), config=True)

    def keys(value: Any) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys(v)}
        return set()

    assert "path" not in keys(record)
    assert yaml.safe_load(record["config_yaml"]) == {"data": {"path": "/data.jsonl"}}


# ------------------------------------------------------- exported YAML in the CLI
@pytest.mark.slow
def test_a_pipeline_built_from_empty_evaluates_like_the_preset(tmp_path: Path) -> None:
    """The builder's export of MemAgent, built slot by slot, gives ``memfactory eval`` the
    same results as the shipped preset with the same parameters and seed."""
    import json
    import os
    import subprocess
    import sys

    from memfactory_core.paths import ASSETS_DIR, SAMPLE_DATA_DIR

    draft = drafts.new_draft("memagent")
    draft["memory"]["params"] = {"max_tokens": 1024}
    for lane, component in (("query", "boxed_answerer"), ("ingest", "memory_writer"),
                            ("ingest", "token_chunker")):
        draft, _ = drafts.add_slot(draft, lane, component)
    draft = drafts.move_slot(draft, "token_chunker", "ingest", 0)
    draft = drafts.set_slot(draft, "memory_writer", {}, "policy")
    draft = drafts.set_slot(draft, "boxed_answerer", {"max_new_tokens": 64}, "policy")
    draft = drafts.set_slot(draft, "token_chunker", {"chunk_tokens": 5000,
                                                     "max_chunks": None})
    exported = tmp_path / "built.yaml"
    exported.write_text(drafts.draft_yaml(draft))

    def evaluate(pipeline: str, out: Path) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "eval", "assets/configs/eval_memagent_tiny.yaml",
             f"pipeline={pipeline}", f"data.path={SAMPLE_DATA_DIR / 'hotpotqa_sample.jsonl'}",
             "data.docs=3", "data.limit=2", f"output_dir={out}", "--quiet"],
            cwd=ASSETS_DIR.parent, text=True, capture_output=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(ASSETS_DIR.parent)})
        assert done.returncode == 0, done.stderr
        return json.loads((out / "results.json").read_text())

    built = evaluate(str(exported), tmp_path / "built")
    preset = evaluate("memagent", tmp_path / "preset")
    described = {**built["summary"]["pipeline"], "description": ""}
    assert described == {**preset["summary"]["pipeline"], "description": ""}

    def outcome(results: dict[str, Any]) -> list[Any]:
        return [(r["id"], r["predictions"], r["em"], r["f1"], r["sub_em"])
                for r in results["records"]]

    assert outcome(built) == outcome(preset)
    for key in ("em", "sub_em", "f1", "boxed_rate", "n"):
        assert built["summary"][key] == preset["summary"][key]


def test_runs_page_lists_evaluation_records_with_their_traces(store: RunStore) -> None:
    from app.tabs.runs import eval_record, record_choices

    run = store.create_run("eval", {})
    trace = {"answer": "x", "steps": [{"lane": "query", "slot": 0,
                                       "component": "boxed_answerer"}]}
    store.add_samples(run.id, [{"question": "Who?", "em": 1.0, "trace": trace},
                               {"question": "Q" * 100, "em": 0.0, "trace": trace}],
                      kind="eval_record", step=0)
    store.add_samples(run.id, [{"question": "not a record"}], kind="trajectory", step=1)
    choices = record_choices(store, run.id)
    assert choices == [("1. Who? · em 1.00", 0), (f"2. {'Q' * 67}... · em 0.00", 1)]
    assert eval_record(store, run.id, 1)["question"] == "Q" * 100
    assert eval_record(store, run.id, 2) is None
    assert record_choices(store, None) == [] and eval_record(store, None, 0) is None


# ------------------------------------------------------------------- the context
def test_pollers_tick_only_while_their_tab_is_visible(store: RunStore) -> None:
    import gradio as gr

    from app.context import AppContext, TabSpec

    made: dict[str, Any] = {}

    def tab(name: str) -> Any:
        def register(ctx: AppContext) -> None:
            made[name] = ctx.poller(name, gr.Timer(1.0))
        return register

    with gr.Blocks() as demo:
        ctx = AppContext(store=store, demo=demo)
        ctx.build_tabs([TabSpec("A", "a", tab("a")), TabSpec("B", "b", tab("b"))],
                       selected="b")
    assert (made["a"].active, made["b"].active) == (False, True)
    switches = [f for f in demo.fns.values() if f.name == "switch"]
    assert len(switches) == 2
    answers = [[t.active for t in f.fn()] for f in switches]
    assert sorted(answers) == [[False, True], [True, False]]


def test_the_workbench_starts_with_only_the_visible_tab_polling(store: RunStore) -> None:
    import gradio as gr

    from app.ui import build_app, tab_specs

    assert [t.id for t in tab_specs()][:4] == ["build", "train", "evaluate", "runs"]
    demo = build_app(store)
    timers = [b for b in demo.blocks.values() if isinstance(b, gr.Timer)]
    assert len(timers) >= 3
    assert [t.value for t in timers if t.active] == [1.0]  # the Build tab's Try it poller
    on_runs = build_app(store, selected="runs")
    active = [t for t in on_runs.blocks.values() if isinstance(t, gr.Timer) and t.active]
    assert [t.value for t in active] == [2.0]  # the Runs poller


def test_uploads_stay_inside_the_workspace(tmp_path: Path) -> None:
    from app.tabs.config_tab import keep_upload, upload_dir
    from memfactory_core.paths import memfactory_home

    sent = tmp_path / "my data;rm -rf.jsonl"
    sent.write_text('{"x": 1}\n')
    kept = Path(keep_upload(str(sent)))
    assert kept.parent == upload_dir() and kept.name == "my_data_rm_-rf.jsonl"
    assert kept.resolve().is_relative_to(memfactory_home().resolve())
    assert kept.read_text() == '{"x": 1}\n'
    hidden = tmp_path / ".bashrc"
    hidden.write_text("x")
    assert Path(keep_upload(str(hidden))).name == "bashrc"
    assert str(kept) in drafts.sample_files()  # a workspace file can be tried


@pytest.mark.parametrize("name", drafts.presets())
def test_every_preset_exports_to_the_same_pipeline(name: str) -> None:
    draft = drafts.preset_draft(name)
    assert drafts.check_draft(draft)["ok"], name
    text = drafts.draft_yaml(draft)
    assert drafts.draft_yaml(drafts.draft_from_yaml(text)) == text
    exported = validate_spec(yaml.safe_load(text)).spec
    preset = validate_spec(load_spec(name)).spec
    slots = [*exported.ingest, *exported.query]
    assert [s.id for s in slots] == [s["id"] for ln in drafts.LANES for s in draft[ln]]
    for mine, shipped in zip(slots, [*preset.ingest, *preset.query], strict=True):
        assert shipped.id in (None, mine.id)  # a preset's own ids are kept
    no_ids = {"ingest": {"__all__": {"id"}}, "query": {"__all__": {"id"}}}
    assert exported.model_dump(exclude=no_ids) == preset.model_dump(exclude=no_ids)


def test_imported_ids_are_kept_and_checked() -> None:
    text = drafts.draft_yaml(memagent()).replace("id: token_chunker", "id: chunk")
    draft = drafts.draft_from_yaml(text, "upload")
    assert [s["id"] for s in draft["ingest"]] == ["chunk", "memory_writer"]
    assert "id: chunk\n" in drafts.draft_yaml(draft)
    assert validate_spec(yaml.safe_load(drafts.draft_yaml(draft))).spec.ingest[0].id == "chunk"
    bad = drafts.draft_from_yaml(text.replace("id: chunk", "id: chunk-1"), "upload")
    problems = drafts.check_draft(bad)["problems"]
    assert [(p["location"], p["slot"]) for p in problems] == [("ingest[0].id", "chunk-1")]


def test_pasted_alias_bomb_is_refused_not_expanded() -> None:
    with pytest.raises(drafts.DraftError, match="upload: expands to more than"):
        drafts.draft_from_yaml(ALIAS_BOMB, "upload")


def test_bank_changes_and_shared_ingest_steps_are_shown(tmp_path: Path) -> None:
    import json

    from app.services import with_ingest
    from app.trace_view import memory_diff_html

    diff = {"added": [{"id": "m1", "text": "Nora works at the library"}],
            "updated": [{"id": "m2", "before": "likes tea", "after": "likes coffee"}],
            "deleted": [{"id": "m3", "text": "lives in <Oslo>"}]}
    out = memory_diff_html(diff)
    assert "<ins>+ m1: Nora works at the library</ins>" in out
    assert "~ m2: likes <del>tea</del><ins>coffee</ins>" in out
    assert "<del>- m3: lives in &lt;Oslo&gt;</del>" in out
    steps = [{"lane": "ingest", "slot": 2, "component": "memory_manager", "role": "manager",
              "unit": 0, "memory_diff": diff}]
    (tmp_path / "results.json").write_text(json.dumps(
        {"episodes": {"conv-1": {"steps": steps}}, "records": []}))
    record = with_ingest({"question": "Where?", "ingest_id": "conv-1"}, str(tmp_path))
    assert record["ingest_steps"] == steps
    assert with_ingest({"ingest_id": "other"}, str(tmp_path)) == {"ingest_id": "other"}
    assert with_ingest({"ingest_id": "conv-1"}, None) == {"ingest_id": "conv-1"}
    page = trace_html({"steps": [{"lane": "query", "slot": 0, "component": "retriever"}]},
                      record)
    assert page.index("memory_manager") < page.index("retriever")
    assert "shared by the questions" in page and "memory changes" in page
