"""What the browser tests share: headless Chromium through Playwright, a page with generous
waits, and the workbench served on a free local port. Importing this module skips the
importing test module when Playwright or Chromium is missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.app_support import free_port, launch, served  # noqa: F401 (shared with browser tests)

CHROMIUM = os.environ.get("MEMFACTORY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
                "MEMFACTORY_CHROMIUM)", allow_module_level=True)



@contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium (sandbox off, as in containers), closed on exit."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def browser_page(browser: Any, *, height: int = 1400, timeout_ms: int = 120_000,
                 expect_timeout_ms: int | None = 60_000, reset_expect: bool = True,
                 **context_options: Any) -> Iterator[Any]:
    """A page in a fresh context 1400 px wide. The waits are generous because a busy CI host
    can take tens of seconds to render the workbench; `expect_timeout_ms` sets the timeout of
    Playwright's `expect` (left alone when None) and `reset_expect` puts it back to its 5 s
    default on exit."""
    context = browser.new_context(viewport={"width": 1400, "height": height}, **context_options)
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    if expect_timeout_ms is not None:
        sync_api.expect.set_options(timeout=expect_timeout_ms)
    try:
        yield page
    finally:
        if expect_timeout_ms is not None and reset_expect:
            sync_api.expect.set_options(timeout=5_000)
        context.close()



