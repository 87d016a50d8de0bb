"""The Build, Evaluate and Runs pages in a real browser (Playwright + headless Chromium):
a pipeline built by mouse drag from an empty canvas, validation errors that appear and go,
save and reload, Try it with its trace, an evaluation submitted from its form and opened in
Runs, and a new component class in the palette with a working form. Screenshots go to the
test's own output folder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.ui import build_app
from jobs.store import RunStore
from tests.browser_support import browser_page, chromium, launch, sync_api
from tests.test_app_builder import probe_component

pytestmark = pytest.mark.slow
expect = sync_api.expect

ITEM = "#builder .mfb-item[data-component='{}']"
LANE = "#builder .mfb-lane[data-lane='{}']"
SLOT = "#builder .mfb-slot[data-id='{}']"
LANE_IDS_JS = """(lane) => [...document.querySelectorAll(
  `#builder .mfb-lane[data-lane="${lane}"] .mfb-slot`)].map(e => e.dataset.id)"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    with browser_page(browser, height=1500, timeout_ms=120_000, expect_timeout_ms=60_000) as p:
        yield p


def serve(store: RunStore, scheduler: Any = None) -> tuple[Any, str]:
    demo = build_app(store, scheduler, refresh_s=0.5)
    return demo, launch(demo)


def settle(page: Any) -> None:
    """Wait until the builder has drawn the server's answer to its last edit."""
    page.wait_for_function("(document.querySelector('#builder .mfb')?.parentElement"
                           "?.closest('[data-busy]')?.dataset.busy ?? '0') === '0'")


def drag(page: Any, source: str, target: str, where: str = "end") -> None:
    """Press on ``source``, move in small steps and release over ``target``: its bottom
    edge (``end``), its top edge (``top``) or its middle."""
    settle(page)
    page.locator(source).first.scroll_into_view_if_needed()
    src = page.locator(source).first.bounding_box()
    dst = page.locator(target).first.bounding_box()
    assert src and dst, f"{source} or {target} is not on the page"
    x0, y0 = src["x"] + src["width"] / 2, src["y"] + src["height"] / 2
    x1 = dst["x"] + dst["width"] / 2
    y1 = {"end": dst["y"] + dst["height"] - 4, "top": dst["y"] + 4}.get(
        where, dst["y"] + dst["height"] / 2)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 4, y0 + 4, steps=4)
    page.mouse.move(x1, y1, steps=25)
    page.mouse.up()


def lane_ids(page: Any, lane: str, expected: list[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = page.evaluate(LANE_IDS_JS, lane)
        if seen == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{lane} lane holds {seen}, not {expected}")


def open_builder(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("#builder .mfb-item")
    page.wait_for_function("typeof Sortable !== 'undefined'")


def test_build_by_drag_validate_save_reload_try_and_evaluate(page: Any, tmp_path: Path) -> None:
    from jobs.scheduler import Scheduler

    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    scheduler = Scheduler(store, gpus=[], poll_s=0.2, heartbeat_s=1.0)
    scheduler.start()
    demo, url = serve(store, scheduler)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        open_builder(page, url)
        page.click("#build-new")
        lane_ids(page, "ingest", [])
        lane_ids(page, "query", [])
        # palette -> lanes, in the wrong order first
        drag(page, ITEM.format("memory_writer"), LANE.format("ingest"))
        lane_ids(page, "ingest", ["memory_writer"])
        drag(page, ITEM.format("token_chunker"), LANE.format("ingest"))
        lane_ids(page, "ingest", ["memory_writer", "token_chunker"])
        expect(page.locator("#builder .mfb-problems")).to_contain_text(
            "must start with a segmenter")
        expect(page.locator(SLOT.format("memory_writer"))).to_have_class(
            "mfb-slot mfb-bad")
        page.screenshot(path=str(shots / "1-wrong-order.png"))
        # a reorder within the lane
        drag(page, SLOT.format("token_chunker"), SLOT.format("memory_writer"), "top")
        lane_ids(page, "ingest", ["token_chunker", "memory_writer"])
        drag(page, ITEM.format("boxed_answerer"), LANE.format("query"))
        lane_ids(page, "query", ["boxed_answerer"])
        drag(page, ITEM.format("memory_writer"), LANE.format("query"))
        lane_ids(page, "query", ["boxed_answerer", "memory_writer_2"])
        # a removal: drag the extra slot out onto the bin
        drag(page, SLOT.format("memory_writer_2"), "#builder .mfb-trash", "middle")
        lane_ids(page, "query", ["boxed_answerer"])
        expect(page.locator("#builder .mfb-problems")).to_contain_text("valid pipeline")
        page.screenshot(path=str(shots / "2-built.png"))

        # a bad parameter: the problem appears on its slot and goes when fixed
        page.click(SLOT.format("boxed_answerer"))
        field = page.locator("#builder .mfb-form input[data-param='max_new_tokens']")
        expect(field).to_have_attribute("min", "1")
        field.fill("0")
        field.press("Tab")
        problem = page.locator("#builder .mfb-problem")
        expect(problem).to_contain_text("query[0] boxed_answerer: params.max_new_tokens")
        expect(page.locator(SLOT.format("boxed_answerer"))).to_have_class(
            "mfb-slot mfb-bad mfb-selected")
        expect(page.locator("#build-status")).to_contain_text("1 problem(s)")
        page.click(SLOT.format("token_chunker"))  # select another slot ...
        problem.click()  # ... and the problem selects its slot again
        expect(page.locator("#builder .mfb-form h4")).to_have_text("query[0] boxed_answerer")
        expect(page.locator("#builder .mfb-form label[data-field='max_new_tokens']")
               ).to_have_class("mfb-field mfb-bad")
        page.screenshot(path=str(shots / "3-bad-parameter.png"))
        field = page.locator("#builder .mfb-form input[data-param='max_new_tokens']")
        field.fill("24")
        field.press("Tab")
        expect(page.locator("#builder .mfb-problems")).to_contain_text("valid pipeline")
        expect(page.locator("#build-status")).to_contain_text("Valid pipeline")

        # save, reload the page, find it
        name = page.get_by_label("Pipeline name")
        name.fill("dragged")
        name.press("Enter")
        page.get_by_text("YAML: export and import").click()
        expect(page.locator("#build-yaml")).to_contain_text("name: dragged")
        page.click("#build-save")
        deadline = time.monotonic() + 15
        while not store.get_pipeline("dragged") and time.monotonic() < deadline:
            time.sleep(0.1)
        saved = store.get_pipeline("dragged")
        assert saved is not None and saved.spec["version"] == 1 and saved.spec["valid"]
        assert saved.spec["draft"]["query"][0]["params"] == {"max_new_tokens": 24}
        page.reload()
        page.wait_for_selector("#builder .mfb-item")
        lane_ids(page, "ingest", ["token_chunker", "memory_writer"])  # the draft came back
        page.click("#build-new")
        lane_ids(page, "ingest", [])
        page.locator("#build-saved input").click()
        page.get_by_role("option", name="dragged (v1)").click()
        lane_ids(page, "ingest", ["token_chunker", "memory_writer"])
        lane_ids(page, "query", ["boxed_answerer"])
        page.screenshot(path=str(shots / "4-reloaded.png"))

        # Try it: a background run, then its trace with memory diffs
        page.click("#build-try")
        expect(page.locator("#build-try-status")).to_contain_text("queued")
        trace = page.locator("#build-trace")
        expect(trace).to_contain_text("memory_writer", timeout=300_000)
        expect(trace.locator("ins").first).to_be_visible()
        expect(trace).to_contain_text("boxed_answerer")
        expect(trace).to_contain_text("role policy")
        page.screenshot(path=str(shots / "5-trace.png"), full_page=True)

        # an evaluation from the Evaluate tab, opened in Runs
        page.get_by_role("tab", name="Evaluate").click()
        expect(page.locator("#evaluate-yaml")).to_contain_text("pipeline: memagent")
        limit = page.locator("#cfg-data-limit input")
        limit.fill("1")
        limit.press("Tab")
        expect(page.locator("#evaluate-cli")).to_contain_text("data.limit=1")
        expect(page.locator("#evaluate-problems")).to_contain_text("Valid config")
        page.screenshot(path=str(shots / "6-evaluate.png"), full_page=True)
        page.click("#evaluate-submit")
        expect(page.get_by_role("tab", name="Runs")).to_have_attribute("aria-selected", "true")
        runs = [r for r in store.list_runs() if r.kind == "eval" and "try" not in r.tags]
        assert len(runs) == 1 and runs[0].config["data"]["limit"] == 1
        expect(page.locator("#runs-details")).to_contain_text(f"Run {runs[0].id}")
        page.screenshot(path=str(shots / "7-runs.png"))
    finally:
        demo.close()
        scheduler.stop()
    assert len(list(shots.glob("*.png"))) == 7


def test_a_new_component_shows_in_the_palette_with_a_working_form(page: Any,
                                                                  tmp_path: Path) -> None:
    from memfactory_core.components import base

    cls = base.register(probe_component())
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    demo, url = serve(store)
    try:
        open_builder(page, url)
        item = page.locator(ITEM.format("probe_filter"))
        expect(item).to_contain_text("chunk → facts")
        expect(page.locator(
            "#builder .mfb-group:has(.mfb-item[data-component='probe_filter']) h5")
        ).to_have_text("extract")
        lane_ids(page, "ingest", ["token_chunker", "memory_writer"])
        drag(page, ITEM.format("probe_filter"), SLOT.format("memory_writer"), "top")
        lane_ids(page, "ingest", ["token_chunker", "probe_filter", "memory_writer"])
        page.click(SLOT.format("probe_filter"))
        form = page.locator("#builder .mfb-form")
        threshold = form.locator("input[data-param='threshold']")
        expect(threshold).to_have_attribute("max", "1")
        expect(form.locator("select[data-param='mode'] option")).to_have_count(3)
        expect(form.locator("select[data-param='keep_all']")).to_be_visible()
        expect(form.locator("textarea[data-param='tags']")).to_be_visible()
        threshold.fill("2")
        threshold.press("Tab")
        expect(page.locator("#builder .mfb-problem")).to_contain_text(
            "ingest[1] probe_filter: params.threshold")
        form.locator("select[data-param='mode']").select_option(label="loose")
        threshold = form.locator("input[data-param='threshold']")
        threshold.fill("0.25")
        threshold.press("Tab")
        expect(page.locator("#builder .mfb-problems")).to_contain_text("valid pipeline")
        page.get_by_text("YAML: export and import").click()
        expect(page.locator("#build-yaml")).to_contain_text("threshold: 0.25")
        expect(page.locator("#build-yaml")).to_contain_text("mode: loose")
        page.screenshot(path=str(tmp_path / "new-component.png"))
    finally:
        demo.close()
        base._REGISTRY.pop(cls.name, None)
    assert (tmp_path / "new-component.png").stat().st_size > 0


def test_the_buttons_edit_the_pipeline_without_a_mouse_drag(page: Any, tmp_path: Path) -> None:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    demo, url = serve(store)
    try:
        open_builder(page, url)
        lane_ids(page, "ingest", ["token_chunker", "memory_writer"])
        page.get_by_text("Edit without a mouse").click()
        page.get_by_role("combobox", name="Component").click()
        page.get_by_role("option", name="memory_writer").click()
        page.click("#build-add")  # the lane radio starts on ingest
        lane_ids(page, "ingest", ["token_chunker", "memory_writer", "memory_writer_2"])
        page.get_by_role("combobox", name="Slot").click()
        page.get_by_role("option", name="ingest[2] memory_writer (memory_writer_2)").click()
        page.click("#build-up")
        lane_ids(page, "ingest", ["token_chunker", "memory_writer_2", "memory_writer"])
        page.click("#build-other-lane")
        lane_ids(page, "query", ["boxed_answerer", "memory_writer_2"])
        expect(page.locator("#build-status")).to_contain_text("problem")
        page.click("#build-remove")
        lane_ids(page, "query", ["boxed_answerer"])
        expect(page.locator("#build-status")).to_contain_text("Valid pipeline")
        page.screenshot(path=str(tmp_path / "buttons.png"))
    finally:
        demo.close()
