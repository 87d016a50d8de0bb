"""Comparing runs: paired bootstrap, run picking, config diff, the evaluation table against a
direct computation from two results.json files, per-question view, figures and exports."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from app.compare import (
    ABSENT,
    TABLE_COLUMNS,
    CompareError,
    build_comparison,
    comparison_json,
    config_diff,
    default_metric,
    display_rows,
    evaluation_table,
    filter_options,
    flatten,
    load_results,
    load_stored_runs,
    parallel_figure,
    parse_tags,
    pick_runs,
    question_diffs,
    record_view,
    report_html,
    results_from_data,
    run_results,
    table_csv,
    traces_side_by_side,
)
from jobs.store import RunStore
from memfactory_core.metrics.paired import (
    ResampleBatch,
    mean_ci,
    paired_bootstrap,
    paired_bootstrap_many,
    relative_change,
    resample_counts,
    resampled_means,
)
from memfactory_core.metrics.stats import bootstrap_ci
from tests.compare_fixtures import eval_config, make_records, results_doc, write_results


def direct_paired(a: np.ndarray, b: np.ndarray, seed: int = 0, n_resamples: int = 2000,
                  confidence: float = 0.95) -> dict[str, float]:
    """The paired percentile bootstrap written out plainly with numpy."""
    rng = np.random.default_rng(seed)
    n = a.size
    idx = rng.integers(0, n, size=(n_resamples, n))
    diffs = (b - a)[idx].mean(axis=1)
    base_means = a[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    rel_low, rel_high = np.quantile(diffs / base_means, [alpha, 1 - alpha])
    return {"diff": b.mean() - a.mean(), "low": low, "high": high,
            "rel": (b.mean() - a.mean()) / a.mean(), "rel_low": rel_low, "rel_high": rel_high}


# ------------------------------------------------------------------ paired bootstrap
def test_paired_bootstrap_matches_direct_numpy() -> None:
    rng = np.random.default_rng(7)
    a = (rng.random(300) < 0.4).astype(float)
    b = np.where(rng.random(300) < 0.8, a, 1 - a) + (rng.random(300) < 0.1)
    b = np.clip(b, 0, 1)
    got = paired_bootstrap(a, b, seed=3)
    want = direct_paired(a, b, seed=3)
    assert got.n == 300
    assert got.diff == pytest.approx(want["diff"])
    assert (got.diff_low, got.diff_high) == pytest.approx((want["low"], want["high"]),
                                                          abs=1e-12)
    assert got.rel == pytest.approx(want["rel"])
    assert (got.rel_low, got.rel_high) == pytest.approx((want["rel_low"], want["rel_high"]),
                                                        abs=1e-12)
    assert got.excludes_zero == (want["low"] > 0 or want["high"] < 0)
    # another seed draws other resamples
    assert paired_bootstrap(a, b, seed=4).diff_low != got.diff_low


def test_paired_interval_is_narrower_than_unpaired_for_correlated_runs() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.5).astype(float)
    b = a.copy()
    flip = rng.choice(400, 30, replace=False)
    b[flip] = 1.0  # the second run fixes some questions and keeps the rest
    paired = paired_bootstrap(a, b)
    assert paired.excludes_zero and paired.diff_low > 0
    _, _, a_high = bootstrap_ci(a)
    _, b_low, _ = bootstrap_ci(b)
    assert b_low < a_high  # the runs' own intervals overlap: unpaired, no conclusion


def test_many_metrics_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((120, 3))
    b = a + rng.normal(0.05, 0.2, (120, 3))
    many = paired_bootstrap_many(a, b, seed=5)
    for j in range(3):
        one = paired_bootstrap(a[:, j], b[:, j], seed=5)
        assert many[j].diff_low == pytest.approx(one.diff_low, abs=1e-12)
        assert many[j].rel_high == pytest.approx(one.rel_high, abs=1e-12)
    # the base's resampled means handed in (shared by several compared runs): same numbers
    reused = paired_bootstrap_many(a, b, seed=5, base_resampled=resampled_means(a, seed=5))
    for got, want in zip(reused, many, strict=True):
        assert got.as_dict() == pytest.approx(want.as_dict(), abs=1e-12)
    with pytest.raises(ValueError, match="base_resampled has shape"):
        paired_bootstrap_many(a, b, base_resampled=np.zeros((10, 3)))


def test_batched_draws_equal_separate_ones() -> None:
    rng = np.random.default_rng(4)
    arrays = [rng.random((50, 2)), rng.random((80, 1)), rng.random((50, 3)), rng.random(80)]
    clusters = [f"c{i % 7}" for i in range(50)]
    batch = ResampleBatch(500, seed=9)
    handles = [batch.add(x) for x in arrays]
    clustered = batch.add(arrays[0], clusters)
    with pytest.raises(RuntimeError, match="has not computed"):
        batch[handles[0]]
    batch.run()
    for h, x in zip(handles, arrays, strict=True):
        assert batch[h] == pytest.approx(resampled_means(x, 500, seed=9), abs=1e-12)
    assert batch[clustered] == pytest.approx(
        resampled_means(arrays[0], 500, seed=9, clusters=clusters), abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 37, 5000])
def test_mean_ci_equals_bootstrap_ci(n: int) -> None:
    values = np.random.default_rng(n).random(n)
    assert mean_ci(values) == pytest.approx(bootstrap_ci(values), abs=1e-12)
    assert mean_ci([1.0] * n) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in mean_ci([]))


def test_resample_counts_are_the_drawn_indices() -> None:
    counts = resample_counts(50, 100, seed=2)
    idx = np.random.default_rng(2).integers(0, 50, size=(100, 50))
    assert counts.shape == (100, 50) and (counts.sum(axis=1) == 50).all()
    assert (counts[17] == np.bincount(idx[17], minlength=50)).all()
    assert resample_counts(50, 100, seed=2) is counts  # cached
    with pytest.raises(ValueError, match="at least one"):
        resample_counts(0)


def test_relative_change_with_a_zero_base() -> None:
    assert list(relative_change([0.1, -0.2, 0.0, 0.5], [0.0, 0.0, 0.0, 0.25])) == [
        math.inf, -math.inf, 0.0, 2.0]
    zero_base = paired_bootstrap([0.0, 0.0, 0.0], [1.0, 0.0, 1.0])
    assert zero_base.rel is None and zero_base.diff == pytest.approx(2 / 3)
    # a base that is rarely right: some resamples have a zero base mean, the upper end is inf
    a = np.zeros(20)
    a[0] = 1.0
    b = np.ones(20)
    rare = paired_bootstrap(a, b)
    assert rare.rel == pytest.approx(19.0) and rare.rel_high == math.inf
    assert math.isfinite(rare.rel_low)


def test_paired_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap_many(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([0.0, math.nan], [1.0, 1.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([0.0], [1.0], confidence=1.5)
    empty = paired_bootstrap([], [])
    assert empty.n == 0 and not empty.excludes_zero


# ---------------------------------------------------------------------- picking runs
def fake_run(i: int, kind: str = "eval", status: str = "succeeded", pipeline: str = "memagent",
             tags: list[str] | None = None) -> Any:
    return SimpleNamespace(id=i, kind=kind, status=status, name=f"r{i}", pipeline=pipeline,
                           model="m", tags=tags or [], notes=None, config={}, summary={},
                           output_dir=None)


def test_pick_runs_by_kind_status_pipeline_and_tag() -> None:
    runs = [fake_run(1, tags=["base"]), fake_run(2, "train", "running", tags=["lora", "x"]),
            fake_run(3, status="failed", pipeline="rag"), fake_run(4, tags=["lora"])]
    assert [r.id for r in pick_runs(runs, kind="eval")] == [1, 3, 4]
    assert [r.id for r in pick_runs(runs, status="succeeded,failed")] == [1, 3, 4]
    assert [r.id for r in pick_runs(runs, pipeline=["rag"])] == [3]
    assert [r.id for r in pick_runs(runs, tag="lora")] == [2, 4]
    assert [r.id for r in pick_runs(runs, kind="eval", tag=["lora", "base"])] == [1, 4]
    assert pick_runs(runs, kind="eval", status="running") == []
    assert [r.id for r in pick_runs(runs, kind="", status=None, tag=[])] == [1, 2, 3, 4]
    assert filter_options(runs) == {"kind": ["eval", "train"],
                                    "status": ["failed", "running", "succeeded"],
                                    "pipeline": ["memagent", "rag"], "tag": ["base", "lora", "x"]}


def test_parse_tags() -> None:
    assert parse_tags("base, lora  lora,x") == ["base", "lora", "x"]
    assert parse_tags(None) == [] and parse_tags(["a", " b "]) == ["a", "b"]
    with pytest.raises(CompareError, match="longer than 64"):
        parse_tags("t" * 65)


# ----------------------------------------------------------------------- config diff
def test_flatten_to_dotted_keys() -> None:
    cfg = {"model": {"model": "m", "options": {}}, "data": {"docs": [10, 20], "limit": 4},
           "pipeline": {"ingest": [{"component": "chunker", "params": {"n": 1}}]}}
    assert flatten(cfg) == {"model.model": "m", "model.options": {}, "data.docs": [10, 20],
                            "data.limit": 4, "pipeline.ingest.0.component": "chunker",
                            "pipeline.ingest.0.params.n": 1}


def test_config_diff_shows_differences_only_by_default() -> None:
    a = eval_config("base", extra={"lr": 1})
    b = eval_config("trained", extra={"lr": 1, "new": True})
    b["data"]["docs"] = 100
    rows = config_diff({"A": a, "B": b})
    assert [r["key"] for r in rows] == ["data.docs", "extra.new", "model.model"]
    assert rows[1]["values"] == [ABSENT, True]
    assert rows[2]["values"] == ["base", "trained"]
    every = config_diff({"A": a, "B": b}, differences_only=False)
    assert "data.limit" in [r["key"] for r in every]
    assert not next(r for r in every if r["key"] == "data.limit")["differs"]
    # output folders always differ: left out unless asked for
    assert "output_dir" not in [r["key"] for r in every]
    assert "output_dir" in [r["key"] for r in config_diff({"A": a, "B": b}, ignore=())]
    # 1 and 1.0 and True are different settings in a YAML file
    assert [r["key"] for r in config_diff({"A": {"x": 1}, "B": {"x": True}})] == ["x"]


# -------------------------------------------------------------- the evaluation table
def script_numbers(base_file: Path, other_file: Path, metric: str) -> dict[str, float]:
    """What someone computes by hand from two results.json files."""
    base = json.loads(base_file.read_text())["records"]
    other = json.loads(other_file.read_text())["records"]
    other_by = {(r["id"], r["docs"]): r for r in other}
    pairs = [(r[metric], other_by[(r["id"], r["docs"])][metric]) for r in base
             if (r["id"], r["docs"]) in other_by]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    return {"n": len(pairs), **direct_paired(a, b)}


@pytest.fixture()
def two_files(tmp_path: Path) -> tuple[Path, Path]:
    base = write_results(tmp_path / "base" / "results.json",
                         make_records(200, 0.25, seed=1), eval_config("smollm2"))
    # the trained run answered only 150 of the questions, written in another order
    trained = write_results(tmp_path / "trained" / "results.json",
                            make_records(200, 0.45, seed=2)[:150][::-1],
                            eval_config("adapter"))
    return base, trained


def test_table_relative_gain_and_paired_ci_equal_a_script(two_files: tuple[Path, Path]
                                                          ) -> None:
    base_file, trained_file = two_files
    runs = [load_results(base_file, "base"), load_results(trained_file, "trained")]
    rows = evaluation_table(runs, base=0)
    assert set(rows[0]) == set(TABLE_COLUMNS)
    for metric in ("em", "f1"):
        row = next(r for r in rows if r["run"] == "trained" and r["metric"] == metric)
        want = script_numbers(base_file, trained_file, metric)
        assert row["n_paired"] == want["n"] == 150
        assert row["diff"] == pytest.approx(want["diff"])
        assert (row["diff_low"], row["diff_high"]) == pytest.approx((want["low"], want["high"]),
                                                                    abs=1e-12)
        assert row["rel"] == pytest.approx(want["rel"])
        assert (row["rel_low"], row["rel_high"]) == pytest.approx(
            (want["rel_low"], want["rel_high"]), abs=1e-12)
        assert row["significant"] == (want["low"] > 0 or want["high"] < 0)
    em_trained = next(r for r in rows if r["run"] == "trained" and r["metric"] == "em")
    assert em_trained["significant"] and em_trained["rel"] > 0.3
    # each run's own interval is the one its results.json summary holds (all its questions)
    summary = json.loads(base_file.read_text())["summary"]
    em_base = next(r for r in rows if r["run"] == "base" and r["metric"] == "em")
    assert em_base["n"] == 200 and em_base["diff"] is None
    assert [em_base["mean"], em_base["ci_low"], em_base["ci_high"]] == pytest.approx(
        [summary["em"], *summary["em_ci95"]], abs=1e-12)
    shown = display_rows([em_trained])[0]
    assert shown[-1] == "*" and shown[5] == 150 and shown[7].startswith("+")


def test_each_run_is_paired_on_its_own_questions(tmp_path: Path,
                                                 two_files: tuple[Path, Path]) -> None:
    base_file, trained_file = two_files
    third_file = write_results(tmp_path / "third" / "results.json",
                               make_records(200, 0.35, seed=5)[50:], eval_config("third"))
    runs = [load_results(p) for p in (base_file, trained_file, third_file)]
    rows = evaluation_table(runs, base=0, metrics=["f1"])
    for other in (trained_file, third_file):
        row = next(r for r in rows if r["run"] == other.parent.name)
        want = script_numbers(base_file, other, "f1")
        assert row["n_paired"] == want["n"]
        assert (row["diff_low"], row["diff_high"], row["rel_low"], row["rel_high"]) == \
            pytest.approx((want["low"], want["high"], want["rel_low"], want["rel_high"]),
                          abs=1e-12)


def test_table_groups_by_context_length_and_category(tmp_path: Path) -> None:
    a = results_from_data(results_doc(make_records(60, 0.3, 1, docs=[10, 50],
                                                   categories=[1, 2, 4]), {}), "a")
    b = results_from_data(results_doc(make_records(60, 0.5, 2, docs=[10, 50],
                                                   categories=[1, 2, 4]), {}), "b")
    rows = evaluation_table([a, b], base=0, metrics=["em"])
    groups = list(dict.fromkeys(r["group"] for r in rows))
    assert groups == ["all", "docs=10", "docs=50", "category=1", "category=2", "category=4"]
    docs10 = next(r for r in rows if r["group"] == "docs=10" and r["run"] == "b")
    assert docs10["n"] == 60 and docs10["n_paired"] == 60
    ea = np.array([r["em"] for r in make_records(60, 0.3, 1, docs=[10, 50])[:60]])
    eb = np.array([r["em"] for r in make_records(60, 0.5, 2, docs=[10, 50])[:60]])
    want = direct_paired(ea, eb)
    assert (docs10["diff_low"], docs10["diff_high"]) == pytest.approx(
        (want["low"], want["high"]), abs=1e-12)
    cat2 = next(r for r in rows if r["group"] == "category=2" and r["run"] == "b")
    assert cat2["n_paired"] == 40  # 20 questions of category 2 at each of 2 lengths


def test_summary_only_runs_and_partial_metrics() -> None:
    records = make_records(30, 0.5, 1)
    for r in records[:10]:
        r["f1"] = None  # not scored
    with_records = results_from_data({"summary": {}, "records": records}, "records")
    only_summary = results_from_data({"summary": {"em": 0.4, "em_ci95": [0.3, 0.5], "n": 90},
                                      "records": []}, "summary")
    assert only_summary.metrics == ["em"]
    rows = evaluation_table([with_records, only_summary, with_records], base=0)
    f1 = next(r for r in rows if r["metric"] == "f1" and r["diff"] is not None)
    assert f1["n"] == 20 and f1["n_paired"] == 20 and f1["diff"] == 0.0
    s = next(r for r in rows if r["run"] == "summary")
    assert (s["mean"], s["ci_low"], s["ci_high"], s["n"], s["diff"]) == (0.4, 0.3, 0.5, 90,
                                                                        None)
    no_base = evaluation_table([with_records, with_records], base=None)
    assert all(r["diff"] is None for r in no_base)
    with pytest.raises(CompareError, match="base run"):
        evaluation_table([with_records], base=3)


def test_bad_results_name_the_file_and_record(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=r"x\.json: record 1 has no 'id'"):
        results_from_data({"summary": {}, "records": [{"id": "a"}, {"em": 1}]}, "x", "x.json")
    with pytest.raises(CompareError, match="records 0 and 2 are the same question"):
        results_from_data({"records": [{"id": "a", "docs": 5}, {"id": "b"},
                                       {"id": "a", "docs": 5}]}, "x")
    with pytest.raises(CompareError, match="not evaluation results"):
        results_from_data(["a"], "x")  # type: ignore[arg-type]
    broken = tmp_path / "results.json"
    broken.write_text("{\"summary\": ")
    with pytest.raises(CompareError, match="not valid JSON"):
        load_results(broken)
    with pytest.raises(CompareError, match="no such results file"):
        load_results(tmp_path / "missing.json")


def test_results_are_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r" / "results.json", make_records(10, 0.0, 1), {})
    assert load_results(path).scores[:, 0].sum() == 0
    write_results(path, make_records(12, 1.0, 1), {})
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = load_results(path, label="renamed")
    assert len(again.keys) == 12 and again.label == "renamed"
    assert load_results(path).label == "r"  # a label does not stick to the cached copy


def test_stored_runs_read_their_results_file(tmp_path: Path, two_files: tuple[Path, Path],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path))  # run folders of this test only
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    run = store.create_run("eval", eval_config("smollm2"), name="base eval")
    (Path(run.output_dir)).mkdir(parents=True, exist_ok=True)
    (Path(run.output_dir) / "results.json").write_bytes(two_files[0].read_bytes())
    train = store.create_run("train", {"max_steps": 2}, name="t")
    store.update_run(train.id, summary={"reward": 0.5, "reward_ci95": [0.4, 0.6]})
    got = run_results(store.get_run(run.id))
    assert got.run_id == run.id and got.label == f"#{run.id} base eval" and len(got.keys) == 200
    assert got.config["model"]["model"] == "smollm2"
    t = run_results(store.get_run(train.id))
    assert not t.has_records and t.metrics == ["reward"] and t.config == {"max_steps": 2}


def test_stored_records_stand_in_for_a_missing_results_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path))  # run folders of this test only
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    records = make_records(30, 0.5, seed=3)
    run = store.create_run("eval", eval_config("m"), name="no file")
    store.add_samples(run.id, records, kind="eval_record", step=0)
    store.update_run(run.id, summary={"em": 0.1, "em_ci95": [0.0, 0.2], "n": 30})
    [got] = load_stored_runs(store, [run.id])
    assert len(got.keys) == 30 and got.path is None
    assert got.scores[:, got.metrics.index("em")].sum() == sum(r["em"] for r in records)
    with pytest.raises(CompareError, match="no run with id 77"):
        load_stored_runs(store, [run.id, 77])


# ---------------------------------------------------------------- per-question view
def test_question_diffs_list_wins_and_losses() -> None:
    base = make_records(40, 0.3, 1)
    other = [dict(r) for r in base]
    for i in (3, 7):
        other[i] = {**other[i], "em": 1.0 - other[i]["em"], "prediction": "changed"}
    a = results_from_data({"records": base}, "a")
    b = results_from_data({"records": other}, "b")
    view = question_diffs(a, b, "em")
    changed = {r["id"] for r in view["wins"] + view["losses"]}
    assert changed == {"q00003", "q00007"} and view["ties"] == 38 and view["n"] == 40
    for item in view["wins"]:
        assert item["other_score"] == 1.0 and item["base_score"] == 0.0
        assert item["other_prediction"] == "changed" and item["delta"] == 1.0
    assert view["n_wins"] + view["n_losses"] == 2
    with pytest.raises(CompareError, match="not in both runs"):
        question_diffs(a, b, "bleu1")


def test_traces_side_by_side_with_their_records() -> None:
    trace = {"steps": [{"lane": "query", "slot": 0, "component": "answerer", "unit": 0,
                        "prompt": [{"role": "user", "content": "<script>x</script>"}],
                        "output": "<b>boxed</b>", "memory_before": "notes",
                        "memory_after": "notes & more"}], "answer": "boxed"}
    run = results_from_data({"records": make_records(3, 2.0, 1)}, "r")  # all correct
    record = record_view(run, run.keys[1])
    assert record is not None and record["question"] == "Question 1?" and record["em"] == 1.0
    assert record_view(run, ("nope", "x", None, None)) is None
    both = traces_side_by_side(trace, None, "run <1>", "trained", record, None)
    assert "<script>x" not in both and "&lt;script&gt;x" in both
    assert both.count("class='mf-trace") == 2 and "run &lt;1&gt;" in both
    assert "Question 1?" in both and "<h4>trained</h4>" in both  # a missing trace is named


# -------------------------------------------------------------- figures and exports
def test_parallel_coordinates_use_the_varying_settings_and_metrics() -> None:
    runs = []
    for i, (model, lr) in enumerate([("base", 0.1), ("lora", 0.1), ("lora", 0.01)]):
        cfg = {"model": model, "lr": lr, "same": 1}
        runs.append(results_from_data({"records": make_records(20, 0.2 * (i + 1), i)}, f"r{i}"))
        runs[-1].config = cfg
    fig = parallel_figure(runs, color_metric="f1")
    dims = fig.data[0].dimensions
    labels = [d.label for d in dims]
    assert labels == ["run", "lr", "model", "em", "sub_em", "f1", "boxed"]
    model_dim = dims[2]
    assert list(model_dim.ticktext) == ["base", "lora"] and list(model_dim.values) == [0, 1, 1]
    assert list(dims[1].values) == [0.1, 0.1, 0.01]
    assert list(fig.data[0].line.color) == pytest.approx([float(np.mean(
        [r["f1"] for r in make_records(20, 0.2 * (i + 1), i)])) for i in range(3)])
    single = parallel_figure(runs[:1])
    assert not single.data and "at least two" in single.layout.annotations[0].text


def test_exports(two_files: tuple[Path, Path]) -> None:
    runs = [load_results(two_files[0], "base <b>"), load_results(two_files[1], "trained")]
    comparison = build_comparison(runs, base=0)
    assert set(comparison["timings"]) == {"table", "config_diff"}
    assert [d["key"] for d in comparison["config_diff"]] == ["model.model"]
    text = table_csv(comparison["table"])
    header, first = text.splitlines()[:2]
    assert header.split(",") == TABLE_COLUMNS and first.startswith("all,base <b>,em,200,")
    data = json.loads(comparison_json(comparison))
    assert data["base"] == "base <b>" and len(data["table"]) == len(comparison["table"])
    infinite = {**comparison, "table": [{**comparison["table"][0], "rel_high": math.inf,
                                         "mean": math.nan}]}
    row = json.loads(comparison_json(infinite))["table"][0]
    assert row["rel_high"] == "inf" and row["mean"] is None
    page = report_html(comparison, {"Parallel coordinates": parallel_figure(runs)})
    assert page.startswith("<!DOCTYPE html>") and "base &lt;b&gt;" in page
    assert "<script src=" not in page and "cdn.plot.ly" not in page.split("plotly.js v")[0]
    assert page.count("Plotly.newPlot") == 1 and len(page) > 1_000_000  # plotly.js inline
    assert "model.model" in page and "smollm2" in page


# ----------------------------------------------------- episodes, categories, NaN files
def direct_cluster_paired(a: np.ndarray, b: np.ndarray, clusters: list[str], seed: int = 0,
                          n_resamples: int = 2000) -> tuple[float, float]:
    """The cluster bootstrap written out: draw whole clusters, pool their questions."""
    names = sorted(set(clusters))
    members = [np.flatnonzero(np.array(clusters) == c) for c in names]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(names), size=(n_resamples, len(names)))
    diffs = [float(np.mean(np.concatenate([(b - a)[members[g]] for g in row]))) for row in idx]
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(low), float(high)


def conversation_records(seed: int, accuracy: float) -> list[dict[str, Any]]:
    """Eight conversations of 12 questions whose difficulty depends on the conversation."""
    rng = np.random.default_rng(seed)
    hard = np.random.default_rng(99).random(8)
    out = []
    for c in range(8):
        for q in range(12):
            ok = float(rng.random() < accuracy * 2 * hard[c])
            out.append({"id": f"conv-{c}/q{q}", "episode_id": f"conv-{c}", "docs": None,
                        "category": 1 + q % 2, "category_name": ["multi-hop", "temporal"][q % 2],
                        "question": f"q{q}", "answers": ["a"], "prediction": "a" if ok else "b",
                        "locomo_f1": ok, "bleu1": None if q == 0 else ok / 2})
    return out


def test_cluster_bootstrap_matches_a_direct_computation() -> None:
    a_rec, b_rec = conversation_records(1, 0.3), conversation_records(2, 0.45)
    a = np.array([r["locomo_f1"] for r in a_rec])
    b = np.array([r["locomo_f1"] for r in b_rec])
    clusters = [r["episode_id"] for r in a_rec]
    got = paired_bootstrap(a, b, clusters=clusters)
    assert (got.diff_low, got.diff_high) == pytest.approx(
        direct_cluster_paired(a, b, clusters), abs=1e-12)
    assert got.diff == paired_bootstrap(a, b).diff
    # a gain made on three conversations only: the questions are not independent evidence
    lifted = np.where(np.isin(np.array(clusters), ["conv-0", "conv-1", "conv-2"]), 1.0, a)
    by_question = paired_bootstrap(a, lifted)
    by_episode = paired_bootstrap(a, lifted, clusters=clusters)
    assert by_episode.diff == by_question.diff
    assert (by_episode.diff_high - by_episode.diff_low
            > 1.5 * (by_question.diff_high - by_question.diff_low))
    with pytest.raises(ValueError, match="labels for"):
        paired_bootstrap(a, b, clusters=clusters[:-1])


def test_table_resamples_episodes_and_names_categories() -> None:
    a = results_from_data({"records": conversation_records(1, 0.3)}, "a")
    b = results_from_data({"records": conversation_records(2, 0.45)}, "b")
    assert a.metrics == ["locomo_f1", "bleu1"]
    rows = evaluation_table([a, b], base=0, cluster=True)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    assert groups == ["all", "category=1 (multi-hop)", "category=2 (temporal)"]
    row = next(r for r in rows if r["group"] == "all" and r["run"] == "b"
               and r["metric"] == "locomo_f1")
    ea = np.array([r["locomo_f1"] for r in conversation_records(1, 0.3)])
    eb = np.array([r["locomo_f1"] for r in conversation_records(2, 0.45)])
    clusters = [r["episode_id"] for r in conversation_records(1, 0.3)]
    assert (row["diff_low"], row["diff_high"]) == pytest.approx(
        direct_cluster_paired(ea, eb, clusters), abs=1e-12)
    bleu = next(r for r in rows if r["group"] == "all" and r["run"] == "b"
                and r["metric"] == "bleu1")
    assert bleu["n_paired"] == 88  # the first question of each conversation has no BLEU-1
    comparison = build_comparison([a, b], cluster=True)
    assert comparison["cluster"] and comparison["runs"][0]["episodes"] == 8
    assert "whole episodes resampled" in report_html(comparison)


def test_summary_only_categories_and_nan_in_results_file(tmp_path: Path) -> None:
    summary = {"locomo_f1": 0.4, "locomo_f1_ci95": [0.3, 0.5], "n": 10,
               "by_category": {"1": {"name": "multi-hop", "locomo_f1": 0.2,
                                     "locomo_f1_ci95": [0.1, 0.3], "n": 4}}}
    only = results_from_data({"summary": summary, "records": []}, "s")
    full = results_from_data({"records": conversation_records(1, 0.3)}, "r")
    rows = evaluation_table([full, only], base=0, metrics=["locomo_f1"])
    cat = next(r for r in rows if r["run"] == "s" and r["group"].startswith("category=1"))
    assert (cat["mean"], cat["ci_low"], cat["n"]) == (0.2, 0.1, 4)
    path = tmp_path / "nan" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"summary": {"boxed_rate": math.nan},
                                "records": [{"id": "a", "em": 1.0}]}))
    assert "NaN" in path.read_text()
    assert load_results(path).metrics == ["em"]


def test_default_metric_is_the_first_that_varies(tmp_path: Path) -> None:
    records = make_records(30, 0.5, seed=1)
    varied = write_results(tmp_path / "a" / "results.json", records, eval_config("a"))
    flat = [{**r, "em": 0.0, "sub_em": 0.0} for r in records]
    flat_file = write_results(tmp_path / "b" / "results.json", flat, eval_config("b"))
    assert default_metric([load_results(varied, "a")]) == "em"
    # a small model's exact match is all zeros: questions are listed by the first that varies
    assert default_metric([load_results(flat_file, "b")]) == "f1"
    assert default_metric([]) is None
