"""The Runs page in a real browser (Playwright + headless Chromium): the Cancel button asks a
running run to stop and is disabled for a finished one, the EMA smoothing slider redraws the
curve with the chosen weight, and the log box follows the end of the run's log."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app.ui import build_app
from jobs.store import MetricRow, RunStore
from tests.browser_support import browser_page, chromium, served, sync_api

pytestmark = pytest.mark.slow

T = TypeVar("T")

# x and y of the smoothed reward trace (not the faint raw one) of the run named `name`
REWARD_TRACE_JS = """(name) => {
  const gd = document.querySelector('#runs-plot .js-plotly-plot');
  if (!gd || !gd._fullData) return null;
  const t = gd._fullData.find(t => t.name === name && t.xaxis === 'x' && t.hoverinfo !== 'skip');
  return t ? {x: Array.from(t.x), y: Array.from(t.y)} : null;
}"""

RAW = [0.0, 1.0] * 10  # a reward that jumps every step: smoothing is easy to see


def debiased_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing, written out step by step."""
    out, last = [], 0.0
    for n, v in enumerate(values, start=1):
        last = weight * last + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def eventually(fn: Callable[[], T], what: str, timeout_s: float = 90.0) -> T:
    deadline = time.monotonic() + timeout_s
    value = fn()
    while not value:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
        value = fn()
    return value


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[tuple[str, RunStore]]:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    with served(build_app(store, refresh_s=0.5)) as url:
        yield url, store


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    with browser_page(browser) as p:
        yield p


def running(store: RunStore, name: str, rewards: list[float]) -> int:
    run = store.create_run("train", {"max_steps": 100}, name=name, model="tiny-random")
    store.claim_next("test-worker")
    store.mark_running(run.id, pid=os.getpid())
    now = time.time()
    store.add_metrics(run.id, [MetricRow(i + 1, "reward", v, now) for i, v in enumerate(rewards)])
    return run.id


def open_runs(page: Any, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Runs").click()


def select(page: Any, name: str) -> None:
    page.locator("#runs-table [role=gridcell]").filter(has_text=name).first.click()


def test_cancel_button_requests_a_stop_and_is_off_for_finished_runs(
        app: tuple[str, RunStore], page: Any) -> None:
    url, store = app
    done = running(store, "finished one", [0.1, 0.2])
    store.finish(done, "succeeded")
    active = running(store, "busy one", [0.1, 0.2, 0.3])
    open_runs(page, url)
    details = page.locator("#runs-details")
    sync_api.expect(details).to_contain_text("busy one")  # the active run is shown first
    button = page.locator("#runs-cancel")
    sync_api.expect(button).to_be_enabled()
    assert store.get_run(active).cancel_requested_at is None
    button.click()
    eventually(lambda: store.get_run(active).cancel_requested_at is not None,
               "the cancel request in the store")
    assert store.get_run(active).status == "running"  # it stops at its next step
    sync_api.expect(details).to_contain_text("Cancel requested")
    select(page, "finished one")
    sync_api.expect(details).to_contain_text("finished one")
    sync_api.expect(button).to_be_disabled()
    assert store.get_run(done).cancel_requested_at is None


def test_smoothing_slider_redraws_the_curve(app: tuple[str, RunStore], page: Any) -> None:
    url, store = app
    run_id = running(store, "noisy", RAW)
    open_runs(page, url)
    name = f"#{run_id} noisy"
    steps = list(range(1, len(RAW) + 1))
    slider = page.locator("#runs-smoothing input[type=number]")

    def trace_is(expected: list[float]) -> bool:
        trace = page.evaluate(REWARD_TRACE_JS, name)
        return bool(trace) and trace["x"] == steps and all(
            abs(a - b) < 1e-4 for a, b in zip(trace["y"], expected, strict=True))

    # the default weight, 0.6
    eventually(lambda: trace_is(debiased_ema(RAW, 0.6)), "the curve smoothed at 0.6")
    for weight in (0.0, 0.9):
        slider.fill(str(weight))
        slider.press("Enter")
        expected = RAW if weight == 0 else debiased_ema(RAW, weight)
        eventually(lambda expected=expected: trace_is(expected),
                   f"the curve smoothed at {weight}")
    assert max(debiased_ema(RAW, 0.9)[5:]) - min(debiased_ema(RAW, 0.9)[5:]) < 0.5


def test_log_box_follows_the_end_of_the_log(app: tuple[str, RunStore], page: Any) -> None:
    url, store = app
    run_id = running(store, "chatty", [0.1])
    log = Path(store.get_run(run_id).log_path or "")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"early line {i}\n" for i in range(1, 301)))
    open_runs(page, url)
    box = page.locator("#runs-log textarea")
    sync_api.expect(box).to_have_value(
        "\n".join(f"early line {i}" for i in range(101, 301)))  # the last 200 lines
    with log.open("a") as f:
        f.write("step 2/100 reward=0.5000\n")
    eventually(lambda: box.input_value().endswith("early line 300\nstep 2/100 reward=0.5000"),
               "the new log line in the page")
    assert "early line 101\n" not in box.input_value()  # still the last 200 lines
