"""The Chat tab in a real browser (Playwright + headless Chromium): chat with tiny-random
agents, the inspector shows the memory and the turn's operations after each turn, a reload
keeps the session, rewinding removes the last turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.ui import build_app
from jobs.store import RunStore
from tests.browser_support import browser_page, chromium, launch, sync_api
from tests.test_chat_app import given_facts
from tests.test_chat_service import chat_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[tuple[str, RunStore]]:
    store = RunStore(url=f"sqlite:///{tmp_path}/db.sqlite")
    store.save_pipeline("chat_rag", given_facts("rag"))
    store.save_pipeline("chat_memory_r1", given_facts("memory_r1"))
    store.save_pipeline("chat_memagent", chat_spec("memagent"))
    demo = build_app(store, refresh_s=5.0, selected="chat")
    url = launch(demo)
    try:
        yield url, store
    finally:
        demo.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    # Each test sets its own waits: another module may have reset Playwright's expect timeout.
    with browser_page(browser, timeout_ms=90_000, expect_timeout_ms=120_000) as page:
        yield page


def start(page: Any, pipeline: str) -> None:
    box = page.locator("#chat-pipeline input")
    box.fill(pipeline)
    box.press("Enter")
    page.locator("#chat-new").click()
    sync_api.expect(page.locator("#chat-status")).to_contain_text("started")


def send(page: Any, text: str, turns: int) -> None:
    page.locator("#chat-message textarea").fill(text)
    page.locator("#chat-send").click()
    sync_api.expect(page.locator("#chat-bot")).to_contain_text(text)
    sync_api.expect(page.locator(
        f"#chat-inspector .mf-inspector[data-turn='{turns}'][data-kind='message']")
    ).to_have_count(1)


def test_rag_chat_inspector_reload_rewind(app: tuple[str, RunStore], page: Any) -> None:
    url, _ = app
    page.goto(url)
    start(page, "chat_rag")
    send(page, "My sister Mia lives in Rome.", 1)
    inspector = page.locator("#chat-inspector")
    sync_api.expect(inspector.locator(".mf-bank")).to_contain_text("Mia lives in Rome")
    sync_api.expect(inspector.locator(".mf-ops")).to_contain_text("ADD")
    send(page, "Her dog is called Rex.", 2)
    sync_api.expect(inspector.locator(".mf-bank tr[data-id='m2']")).to_contain_text("Rex")
    sync_api.expect(inspector.locator(".mf-ops .mf-op")).to_have_count(1)
    sync_api.expect(page.locator("#chat-trace")).to_contain_text("Question: Her dog")
    # a reload shows the same session, its messages and its memory
    page.reload()
    sync_api.expect(page.locator("#chat-bot")).to_contain_text("Her dog is called Rex.")
    sync_api.expect(inspector.locator(".mf-bank tr[data-id='m2']")).to_contain_text("Rex")
    # rewind to the first turn: the second turn and its memory entry are gone
    page.locator("#chat-keep input").fill("1")
    page.locator("#chat-rewind").click()
    sync_api.expect(page.locator("#chat-status")).to_contain_text("2 message(s) removed")
    sync_api.expect(page.locator("#chat-bot")).not_to_contain_text("Her dog is called Rex.")
    sync_api.expect(inspector.locator(".mf-bank tr[data-id='m2']")).to_have_count(0)
    sync_api.expect(inspector.locator(".mf-bank")).to_contain_text("Mia lives in Rome")


def test_memory_r1_and_memagent_chat(app: tuple[str, RunStore], page: Any) -> None:
    url, _ = app
    page.goto(url)
    start(page, "chat_memory_r1")
    send(page, "I live in Oslo.", 1)
    inspector = page.locator("#chat-inspector")
    sync_api.expect(inspector).to_contain_text("This turn's operations")
    sync_api.expect(page.locator("#chat-trace")).to_contain_text("memory_manager")
    start(page, "chat_memagent")
    page.get_by_text("Document (MemAgent)").click()
    page.locator("#chat-document textarea").fill(
        " ".join(f"Sentence {i} says that Mia has {i} apples." for i in range(10)))
    page.locator("#chat-read").click()
    sync_api.expect(page.locator("#chat-bot")).to_contain_text("I read the document")
    sync_api.expect(inspector).to_contain_text("TextMemory")
    sync_api.expect(inspector.locator(".mf-ops")).to_contain_text("REWRITE")
    send(page, "How many apples has Mia?", 1)
    sync_api.expect(page.locator("#chat-trace")).to_contain_text("boxed_answerer")


def choose(page: Any, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option).click()


def type_in(page: Any, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Enter")


def test_memagent_reads_a_workspace_file(app: tuple[str, RunStore], page: Any,
                                         tmp_path: Path) -> None:
    from memfactory_core.paths import memfactory_home

    folder = memfactory_home() / "documents" / tmp_path.name
    folder.mkdir(parents=True)
    (folder / "apples.txt").write_text(
        " ".join(f"Sentence {i} says that Mia has {i} apples." for i in range(10)))
    ref = f"documents/{tmp_path.name}/apples.txt"
    url, _ = app
    page.goto(url)
    start(page, "chat_memagent")
    page.get_by_text("Document (MemAgent)").click()
    choose(page, "chat-doc-source", "workspace file")
    type_in(page, "chat-doc-file", "../outside.txt")
    page.locator("#chat-read").click()
    sync_api.expect(page.locator("#chat-status")).to_contain_text("would leave the workspace")
    choose(page, "chat-doc-file", ref)
    page.locator("#chat-read").click()
    sync_api.expect(page.locator("#chat-bot")).to_contain_text("I read the document")
    sync_api.expect(page.locator("#chat-inspector")).to_contain_text(f"Read from {ref}")
    sync_api.expect(page.locator("#chat-inspector")).to_contain_text("TextMemory")


def test_unreachable_endpoint_is_refused_and_the_session_stays(app: tuple[str, RunStore],
                                                                page: Any) -> None:
    url, store = app
    page.goto(url)
    start(page, "chat_rag")
    send(page, "My sister Mia lives in Rome.", 1)
    page.locator("#chat-model input, #chat-model textarea").first.fill(
        "openai:gpt-x@http://127.0.0.1:9/v1")
    page.locator("#chat-new").click()
    sync_api.expect(page.locator("#chat-status")).to_contain_text("does not answer")
    sync_api.expect(page.locator("#chat-bot")).to_contain_text("My sister Mia lives in Rome.")
    page.reload()
    sync_api.expect(page.locator("#chat-bot")).to_contain_text("My sister Mia lives in Rome.")
    sync_api.expect(page.locator("#chat-inspector .mf-bank")).to_contain_text("Mia")
    from app.chat_service import ChatService

    stored = ChatService(store)
    assert [s["id"] for s in stored.sessions()] == [1]
    assert [m["role"] for m in stored.messages(1)] == ["user", "assistant"]
