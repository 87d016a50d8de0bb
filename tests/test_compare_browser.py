"""The Compare tab in a real browser (Playwright + headless Chromium): filter and pick runs,
read the paired difference against the base, open a won question's traces side by side, see
every setting, edit tags and notes, export the table."""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.store import RunStore
from tests.browser_support import browser_page, chromium, launch, served, sync_api
from tests.compare_fixtures import make_records
from tests.test_compare_app import compare_app, stored_eval

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture()
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
        ) -> Iterator[tuple[str, RunStore, int, int]]:
    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path))  # run folders of this test only
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    base = stored_eval(store, "base", "smollm2", make_records(60, 0.2, seed=1))
    trained = stored_eval(store, "trained", "adapter", make_records(60, 0.6, seed=2),
                          tags=["lora"])
    store.create_run("train", {"max_steps": 2}, name="a training run")
    with served(compare_app(store, refresh_s=0.5)) as url:
        yield url, store, base, trained


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    # a shared CPU can be slow to answer
    with browser_page(browser, timeout_ms=30_000, reset_expect=False,
                      accept_downloads=True) as p:
        yield p


def blur(page: Any) -> None:
    page.keyboard.press("Escape")
    page.locator("#compare-summary").click()


def choose(page: Any, elem_id: str, option: str) -> None:
    blur(page)
    page.locator(f"#{elem_id} input").click()
    # this dropdown's own list: another one may still be closing when this one opens
    page.locator(f"#{elem_id}").get_by_role("option", name=option).click()
    blur(page)


def options(page: Any, elem_id: str) -> list[str]:
    """The choices a dropdown offers now."""
    blur(page)
    page.locator(f"#{elem_id} input").click()
    with contextlib.suppress(sync_api.TimeoutError):  # no options: the list stays closed
        page.locator(f"#{elem_id}").get_by_role("option").first.wait_for(timeout=2_000)
    # read in one step: the periodic refresh may re-render the list between two reads
    names = page.locator(f"#{elem_id}").get_by_role("option").evaluate_all(
        "els => els.map(e => e.getAttribute('aria-label'))")
    blur(page)
    return names


def wait_until(fn: Any, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError(what)


def test_compare_two_evaluations(app: tuple[str, RunStore, int, int], page: Any) -> None:
    url, store, base, trained = app
    page.goto(url)
    expect = sync_api.expect
    # the filters narrow the runs offered: evaluations tagged lora
    wait_until(lambda: len(options(page, "compare-runs")) == 3, "three runs offered")
    choose(page, "compare-kind", "eval")
    wait_until(lambda: len(options(page, "compare-runs")) == 2, "two evaluations offered")
    choose(page, "compare-tag", "lora")
    wait_until(lambda: options(page, "compare-runs") == [f"#{trained} trained (eval, "
                                                          "succeeded)"], "the tagged run")
    page.locator("#compare-tag button.token-remove, #compare-tag .token-remove").first.click()
    wait_until(lambda: len(options(page, "compare-runs")) == 2, "both evaluations again")
    # the first run picked is the base
    choose(page, "compare-runs", f"#{base} base")
    choose(page, "compare-runs", f"#{trained} trained")
    expect(page.locator("#compare-summary")).to_contain_text(f"2 run(s), base #{base} base")
    table = page.locator("#compare-table")
    em_row = table.locator("tr").filter(has_text=f"#{trained} trained").filter(
        has_text="em").first
    expect(em_row).to_contain_text("+227.3%")
    expect(em_row).to_contain_text("*")
    # settings: differences only, then all of them
    diff = page.locator("#compare-diff")
    expect(diff).to_contain_text("model.model")
    expect(diff).not_to_contain_text("data.limit")
    page.locator("#compare-diff-only input").uncheck()
    expect(diff).to_contain_text("data.limit")
    # parallel coordinates drawn over both runs
    expect(page.locator("#compare-parallel .js-plotly-plot")).to_be_visible()
    # per question: a win opens both traces side by side
    expect(page.locator("#compare-questions-summary")).to_contain_text("27 wins")
    page.locator("#compare-wins [role=gridcell]").filter(has_text="Question 0?").first.click()
    traces = page.locator("#compare-traces")
    expect(traces.locator(".mf-trace")).to_have_count(2)
    expect(traces).to_contain_text(f"#{base} base")
    expect(traces).to_contain_text(f"#{trained} trained")
    # tags and notes are saved in the store
    page.get_by_text("Tags and notes").click()
    choose(page, "compare-note-run", f"#{trained} trained")
    expect(page.locator("#compare-tags textarea, #compare-tags input").first).to_have_value(
        "lora")
    page.locator("#compare-tags textarea, #compare-tags input").first.fill("lora, best")
    page.locator("#compare-notes textarea").fill("two steps of GRPO")
    page.locator("#compare-save-notes").click()
    expect(page.locator("#compare-note-message")).to_contain_text("Saved")
    run = store.get_run(trained)
    assert run.tags == ["lora", "best"] and run.notes == "two steps of GRPO"
    wait_until(lambda: "best" in options(page, "compare-tag"), "the new tag is a filter")
    # export the table as CSV
    page.locator("#compare-export-csv").click()
    link = page.locator("#compare-export a").first
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    em = next(r for r in rows if r["run"] == f"#{trained} trained" and r["metric"] == "em")
    assert em["significant"] == "True" and em["n_paired"] == "60"


def test_compare_tab_in_the_workbench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      page: Any) -> None:
    from app.ui import build_app

    monkeypatch.setenv("MEMFACTORY_HOME", str(tmp_path))
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    base = stored_eval(store, "base", "smollm2", make_records(30, 0.2, seed=1))
    demo = build_app(store, refresh_s=0.5, selected="compare")
    url = launch(demo)
    try:
        page.goto(url)
        sync_api.expect(page.get_by_role("tab", name="Compare")).to_have_attribute(
            "aria-selected", "true")
        wait_until(lambda: options(page, "compare-runs") == [f"#{base} base (eval, "
                                                             "succeeded)"], "the run offered")
        # a run finishing while the tab is open shows up through the tab's poller
        later = stored_eval(store, "later", "adapter", make_records(30, 0.5, seed=2))
        wait_until(lambda: len(options(page, "compare-runs")) == 2, f"run {later} offered")
        choose(page, "compare-runs", f"#{later} later")
        sync_api.expect(page.locator("#compare-summary")).to_contain_text("30 records")
    finally:
        demo.close()


def test_html_report_draws_its_figures_offline(tmp_path: Path, page: Any) -> None:
    from app import compare

    runs = []
    for i, acc in enumerate((0.2, 0.5)):
        runs.append(compare.results_from_data(
            {"records": make_records(40, acc, seed=i, docs=[10, 50])}, f"run {i}"))
        runs[-1].config = {"model": f"m{i}"}
    comparison = compare.build_comparison(runs)
    figures = compare.comparison_figures(runs, "em")
    assert set(figures) == {"Parallel coordinates", "By context length"}
    report = tmp_path / "report.html"
    report.write_text(compare.report_html(comparison, figures), encoding="utf-8")
    requested: list[str] = []
    page.route("**/*", lambda route: (requested.append(route.request.url),
                                      route.continue_() if route.request.url.startswith(
                                          "file:") else route.abort()))
    page.goto(report.as_uri())
    sync_api.expect(page.locator(".js-plotly-plot")).to_have_count(2)
    sync_api.expect(page.locator("table").first).to_contain_text("run 1")
    assert all(u.startswith("file:") for u in requested)  # nothing fetched from a network
