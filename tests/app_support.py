"""Serving a Gradio app in tests: a free local port, the app's URL or a gradio_client
``Client`` while it is served, and the app closed on exit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gradio_client import Client


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(demo: Any) -> str:
    """Serve a Gradio app on a free local port without blocking; its URL."""
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(),
                            prevent_thread_lock=True, quiet=True)
    return url


@contextmanager
def served(demo: Any) -> Iterator[str]:
    """The app's URL while it is served; closed on exit."""
    url = launch(demo)
    try:
        yield url
    finally:
        demo.close()


@contextmanager
def api_client(demo: Any) -> Iterator[Client]:
    """A gradio_client ``Client`` of the app while it is served; closed on exit."""
    with served(demo) as url:
        yield Client(url, verbose=False)
