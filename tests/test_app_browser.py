"""The Runs tab in a real browser (Playwright + headless Chromium): selecting a run shows its
reward curve, and the curve grows as the run logs more steps."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.ui import build_app
from jobs.store import MetricRow, RunStore
from tests.browser_support import browser_page, chromium, served, sync_api

pytestmark = pytest.mark.slow

# The reward trace (smoothed line, not the faint raw one) of the run whose legend is `name`.
REWARD_POINTS_JS = """(name) => {
  const gd = document.querySelector('#runs-plot .js-plotly-plot');
  if (!gd || !gd._fullData) return -1;
  const t = gd._fullData.find(t => t.name === name && t.xaxis === 'x' && t.hoverinfo !== 'skip');
  return t ? t.x.length : -1;
}"""


def rewards(start: int, stop: int) -> list[MetricRow]:
    now = time.time()
    return [row for step in range(start, stop) for row in (
        MetricRow(step, "reward", step / 100, now), MetricRow(step, "rewards/f1", 0.5, now),
        MetricRow(step, "kl", 0.01, now), MetricRow(step, "completion_length", 20.0, now))]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[tuple[str, RunStore]]:
    """The workbench over a fresh store, polling every 0.5 s."""
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    with served(build_app(store, refresh_s=0.5)) as url:
        yield url, store


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    with browser_page(browser) as p:
        yield p


def wait_for_points(page: Any, name: str, expected: int, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = page.evaluate(REWARD_POINTS_JS, name)
        if seen == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"the reward curve of {name!r} has {seen} points, not {expected}")


def start_running(store: RunStore, name: str, steps: int) -> int:
    run = store.create_run("train", {"max_steps": 100}, name=name, model="tiny-random")
    store.claim_next("test-worker")
    store.mark_running(run.id, pid=os.getpid())
    store.add_metrics(run.id, rewards(1, steps + 1))
    return run.id


def test_select_run_and_watch_its_curve_grow(app: tuple[str, RunStore], page: Any) -> None:
    url, store = app
    watched = start_running(store, "watched", 10)
    newer = start_running(store, "newer", 3)
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    # the newest active run is shown first
    wait_for_points(page, f"#{newer} newer", 3)
    # clicking the other run's row selects it
    page.locator("#runs-table [role=gridcell]").filter(has_text="watched").first.click()
    wait_for_points(page, f"#{watched} watched", 10)
    sync_api.expect(page.locator("#runs-details")).to_contain_text("step 10 / 100")
    # the run logs more steps, as a running run does: the timer redraws the curve
    store.add_metrics(watched, rewards(11, 16))
    wait_for_points(page, f"#{watched} watched", 15)
    sync_api.expect(page.locator("#runs-details")).to_contain_text("step 15 / 100")


def test_submit_form_shows_errors_then_queues(app: tuple[str, RunStore], page: Any) -> None:
    url, store = app
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()
    editor = page.locator("#submit-config .cm-content")
    sync_api.expect(editor).to_contain_text("loss_type: dapo")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type("\nmax_steps: lots\n")
    page.locator("#submit-button").click()
    message = page.locator("#submit-message")
    sync_api.expect(message).to_contain_text("Not submitted")
    sync_api.expect(message).to_contain_text("max_steps")
    sync_api.expect(editor).to_contain_text("max_steps: lots")  # the edit is kept
    assert store.list_runs() == []
    page.locator("#submit-name input, #submit-name textarea").first.fill("from the form")
    editor.click()
    page.keyboard.press("Control+End")
    for _ in range(len("max_steps: lots\n")):
        page.keyboard.press("Backspace")
    page.locator("#submit-button").click()
    sync_api.expect(message).to_contain_text("Queued train run #1")
    [run] = store.list_runs()
    assert run.name == "from the form" and run.status == "queued"
    sync_api.expect(page.locator("#runs-details")).to_contain_text("Run 1 · from the form")
