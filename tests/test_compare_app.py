"""The Compare tab's named endpoints, driven with gradio_client against a live app."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from app.context import AppContext, TabSpec
from app.tabs import compare as compare_tab
from jobs.store import MetricRow, RunStore
from tests.app_support import api_client
from tests.compare_fixtures import eval_config, make_records, write_results
from tests.test_compare import script_numbers


def compare_app(store: RunStore, refresh_s: float = 5.0) -> gr.Blocks:
    """A workbench holding only the Compare tab."""
    with gr.Blocks(analytics_enabled=False) as demo:
        ctx = AppContext(store=store, refresh_s=refresh_s, demo=demo)
        ctx.build_tabs([TabSpec("Compare", "compare", compare_tab.register)])
    demo.queue()
    return demo


def stored_eval(store: RunStore, name: str, model: str, records: list[dict], **kw: object
                ) -> int:
    run = store.create_run("eval", eval_config(model), name=name, pipeline="memagent", **kw)
    write_results(Path(run.output_dir) / "results.json", records, eval_config(model))
    store.claim_next("w")
    store.mark_running(run.id, pid=1)
    store.finish(run.id, "succeeded", summary={"em": 0.0})
    return run.id


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path))  # run folders of this test only
    return RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")


@pytest.fixture()
def runs(store: RunStore) -> tuple[int, int, int]:
    base = stored_eval(store, "base", "smollm2", make_records(120, 0.2, seed=1))
    trained = stored_eval(store, "trained", "adapter", make_records(120, 0.45, seed=2)[:100],
                          tags=["lora"])
    train = store.create_run("train", {"max_steps": 3, "learning_rate": 0.01}, name="t")
    store.add_metrics(train.id, [MetricRow(s, "reward", s / 10, 0.0) for s in (1, 2, 3)])
    return base, trained, train.id


@pytest.fixture()
def client(store: RunStore) -> Iterator[Client]:
    demo = compare_app(store)
    with api_client(demo) as client:
        yield client


def test_endpoints_are_named(client: Client) -> None:
    named = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/compare_runs", "/compare_questions", "/compare_export",
            "/annotate_run"} <= set(named)


def test_compare_runs_gives_the_script_numbers(client: Client, store: RunStore,
                                               runs: tuple[int, int, int]) -> None:
    base, trained, _ = runs
    data = client.predict([trained, base], base, api_name="/compare_runs")
    assert data["base"] == f"#{base} base" and data["base_id"] == base
    row = next(r for r in data["table"] if r["run"] == f"#{trained} trained"
               and r["metric"] == "em" and r["group"] == "all")
    want = script_numbers(Path(store.get_run(base).output_dir) / "results.json",
                          Path(store.get_run(trained).output_dir) / "results.json", "em")
    assert row["n_paired"] == want["n"] == 100
    assert row["rel"] == pytest.approx(want["rel"])
    assert (row["rel_low"], row["rel_high"]) == pytest.approx((want["rel_low"],
                                                               want["rel_high"]), abs=1e-12)
    assert (row["diff_low"], row["diff_high"]) == pytest.approx((want["low"], want["high"]),
                                                                abs=1e-12)
    assert [d["key"] for d in data["config_diff"]] == ["model.model"]
    every = client.predict([base, trained], None, None, False, api_name="/compare_runs")
    assert "data.limit" in [d["key"] for d in every["config_diff"]]
    by_episode = client.predict([base, trained], base, None, True, True,
                                api_name="/compare_runs")
    assert by_episode["cluster"] and not data["cluster"]
    assert by_episode["runs"][0]["episodes"] == 120  # one question per document haystack
    only_f1 = client.predict([base, trained], None, ["f1"], api_name="/compare_runs")
    assert {r["metric"] for r in only_f1["table"]} == {"f1"}


def test_compare_errors_are_clear(client: Client, runs: tuple[int, int, int]) -> None:
    base, trained, _ = runs
    with pytest.raises(AppError, match="no run with id 999"):
        client.predict([base, 999], None, api_name="/compare_runs")
    with pytest.raises(AppError, match="base run #999 is not among"):
        client.predict([base, trained], 999, api_name="/compare_runs")
    with pytest.raises(AppError, match="'x1' is not a run id"):
        client.predict(["x1"], None, api_name="/compare_runs")
    with pytest.raises(AppError, match="at least one run"):
        client.predict([], None, api_name="/compare_runs")
    with pytest.raises(AppError, match="not with itself"):
        client.predict(base, base, "em", api_name="/compare_questions")
    with pytest.raises(AppError, match="'bleu1' is not in both runs"):
        client.predict(base, trained, "bleu1", api_name="/compare_questions")
    with pytest.raises(AppError, match="format must be one of csv, json, html"):
        client.predict([base], None, "xlsx", api_name="/compare_export")


def test_questions_and_exports(client: Client, runs: tuple[int, int, int]) -> None:
    base, trained, train = runs
    view = client.predict(base, trained, "em", 5, api_name="/compare_questions")
    assert view["n"] == 100 and len(view["wins"]) == min(5, view["n_wins"])
    assert view["n_wins"] > view["n_losses"]
    assert all(w["other_score"] > w["base_score"] for w in view["wins"])
    text = client.predict([base, trained, train], base, "csv", api_name="/compare_export")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["run"] for r in rows} >= {f"#{base} base", f"#{trained} trained"}
    data = json.loads(client.predict([base, trained], base, "json",
                                     api_name="/compare_export"))
    assert data["base_id"] == base and data["table"]
    page = client.predict([base, trained, train], base, "html", api_name="/compare_export")
    assert "Parallel coordinates" in page and "Training curves" in page
    assert "cdn.plot.ly/plotly" not in page


def test_annotate_run(client: Client, store: RunStore, runs: tuple[int, int, int]) -> None:
    base = runs[0]
    out = client.predict(base, ["base", "smollm2", "base"], "untrained reference",
                         api_name="/annotate_run")
    assert out == {"id": base, "tags": ["base", "smollm2"], "notes": "untrained reference"}
    assert store.get_run(base).tags == ["base", "smollm2"]
    kept = client.predict(base, None, "new note", api_name="/annotate_run")
    assert kept["tags"] == ["base", "smollm2"] and kept["notes"] == "new note"
    with pytest.raises(AppError, match="no run with id 4242"):
        client.predict(4242, ["x"], None, api_name="/annotate_run")
    with pytest.raises(AppError, match="longer than 64"):
        client.predict(base, ["y" * 80], None, api_name="/annotate_run")
    with pytest.raises(AppError, match="at most 20,000 are kept"):
        client.predict(base, None, "n" * 20_001, api_name="/annotate_run")
    assert store.get_run(base).tags == ["base", "smollm2"]  # nothing lost
    assert store.get_run(base).notes == "new note"
