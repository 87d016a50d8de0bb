"""OpenAIBackend against a local OpenAI-compatible server (FastAPI + uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm import SamplingParams, load_backend
from memfactory_core.llm.openai_backend import OpenAIBackend, RegexTokenizer

SECRET = "sk-test-7f3a9c-never-shown"


@dataclass
class Server:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app(state: Server) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        state.requests.append(body)
        state.auth.append(request.headers.get("authorization", ""))
        if body["model"] == "boom":
            return JSONResponse({"error": {"message": "model exploded"}}, status_code=500)
        content = body["messages"][-1]["content"]
        if body["model"] == "judge":
            refs = content.split("Reference answers: ", 1)[1].split("\n", 1)[0].split("; ")
            pred = content.rsplit("Predicted answer: ", 1)[1].strip()
            content = "Yes" if pred in refs else "No, it is not"
            body = {**body, "model": "judge-echo"}
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            # Later prompts answer sooner, so responses arrive out of order.
            delay = float(content.rsplit(" ", 1)[-1]) if content.startswith("wait") else 0.0
            await asyncio.sleep(delay)
        finally:
            state.in_flight -= 1
        reply = content if body["model"] == "judge-echo" else f"echo: {content}"
        words = reply.split()
        finish = "stop"
        if len(words) > body.get("max_tokens", 1000):
            words, finish = words[: body["max_tokens"]], "length"
        return JSONResponse(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " ".join(words)},
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(content.split()),
                    "completion_tokens": len(words),
                    "total_tokens": len(content.split()) + len(words),
                },
            }
        )

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    port = _free_port()
    state = Server(url=f"http://127.0.0.1:{port}/v1")
    config = uvicorn.Config(_app(state), host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    yield state
    uv.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def backend(server: Server, monkeypatch: pytest.MonkeyPatch) -> OpenAIBackend:
    monkeypatch.setenv("MEMFACTORY_TEST_KEY", SECRET)
    return OpenAIBackend(
        "echo-model",
        base_url=server.url,
        api_key_env="MEMFACTORY_TEST_KEY",
        max_concurrency=4,
        max_retries=0,
        timeout=10,
    )


def test_batch_is_concurrent_and_in_order(backend: OpenAIBackend, server: Server) -> None:
    n = 8
    prompts = [[{"role": "user", "content": f"wait {0.05 * (n - i):.2f}"}] for i in range(n)]
    server.max_in_flight = 0
    gens = backend.generate(prompts, SamplingParams(max_new_tokens=50))
    assert [g.text for g in gens] == [f"echo: wait {0.05 * (n - i):.2f}" for i in range(n)]
    assert 1 < server.max_in_flight <= 4  # requests overlap (no wall-clock bound: busy hosts)
    assert all(g.finish_reason == "stop" for g in gens)
    assert [g.prompt_tokens for g in gens] == [2] * n
    assert [g.completion_tokens for g in gens] == [3] * n
    assert all(g.prompt_ids is None and g.completion_ids is None for g in gens)


def test_key_sent_as_bearer_but_never_shown(backend: OpenAIBackend, server: Server) -> None:
    server.auth.clear()
    backend.generate([[{"role": "user", "content": "hi"}]], SamplingParams())
    assert server.auth == [f"Bearer {SECRET}"]
    for shown in (repr(backend), str(backend), f"{backend}"):
        assert SECRET not in shown
        assert "MEMFACTORY_TEST_KEY" in shown
    assert SECRET not in repr(vars(backend))


def test_sampling_params_are_sent(backend: OpenAIBackend, server: Server) -> None:
    server.requests.clear()
    params = SamplingParams(
        max_new_tokens=7,
        temperature=0.7,
        top_p=0.9,
        top_k=20,
        repetition_penalty=1.1,
        seed=5,
        stop=("END",),
    )
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    backend.generate(prompts, params)
    sent = sorted(server.requests, key=lambda r: r["messages"][-1]["content"])
    assert [r["seed"] for r in sent] == [5, 6]  # distinct per prompt
    for r in sent:
        assert (r["max_tokens"], r["temperature"], r["top_p"]) == (7, 0.7, 0.9)
        assert (r["top_k"], r["repetition_penalty"], r["stop"]) == (20, 1.1, ["END"])
    server.requests.clear()
    backend.generate(prompts[:1], SamplingParams())
    assert "top_k" not in server.requests[0] and "seed" not in server.requests[0]


def test_length_and_local_stop(backend: OpenAIBackend) -> None:
    prompt = [{"role": "user", "content": "one two three four five"}]
    [gen] = backend.generate([prompt], SamplingParams(max_new_tokens=3))
    assert gen.finish_reason == "length" and gen.text == "echo: one two"
    [gen] = backend.generate([prompt], SamplingParams(stop=("three",)))
    assert gen.text == "echo: one two "


def test_server_error_names_endpoint(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMFACTORY_TEST_KEY", SECRET)
    backend = OpenAIBackend(
        "boom", base_url=server.url, api_key_env="MEMFACTORY_TEST_KEY", max_retries=0
    )
    with pytest.raises(MemFactoryError) as err:
        backend.generate([[{"role": "user", "content": "x"}]] * 3, SamplingParams())
    message = str(err.value)
    assert server.url in message and "500" in message and "'boom'" in message
    assert SECRET not in message


def test_unreachable_endpoint() -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    backend = OpenAIBackend("m", base_url=url, max_retries=0, timeout=2)
    with pytest.raises(MemFactoryError, match=f"endpoint {url}"):
        backend.generate([[{"role": "user", "content": "x"}]], SamplingParams())


def test_missing_key_for_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_MISSING_KEY", raising=False)
    with pytest.raises(MemFactoryError, match="MY_MISSING_KEY"):
        OpenAIBackend("gpt-4o-mini", api_key_env="MY_MISSING_KEY")


def test_load_backend_openai(server: Server) -> None:
    backend = load_backend("echo-model", backend="openai", base_url=server.url, max_retries=0)
    assert isinstance(backend, OpenAIBackend)
    [gen] = backend.generate([[{"role": "user", "content": "ok"}]], SamplingParams())
    assert gen.text == "echo: ok"


def test_regex_tokenizer_round_trip() -> None:
    tok = RegexTokenizer()
    text = "Alice's memory: \\boxed{42}, then  Paris!\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    pieces = [tok.decode([i]) for i in ids]
    assert pieces[:5] == ["Alice", "'", "s", " memory", ":"]
    assert tok.encode(" memory memory") == [ids[3], ids[3]]


def test_custom_tokenizer_is_used(server: Server) -> None:
    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(map(chr, ids))

    backend = OpenAIBackend("echo-model", base_url=server.url, tokenizer=Chars())
    assert backend.count_tokens("abc") == 3


def test_llm_judge_reward_over_the_endpoint(server: Server,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from memfactory_core.config import validate_config
    from memfactory_core.training.config import TrainConfig
    from memfactory_core.training.rewards import RewardContext, compute_rewards
    from tests.fakes import CharTokenizer
    from tests.test_training_units import _result

    monkeypatch.setenv("MEMFACTORY_JUDGE_KEY", SECRET)
    cfg = validate_config({
        "pipeline": "memagent", "model": "tiny-random", "data": {"synthetic": {}},
        "output_dir": "x",
        "rewards": [{"name": "llm_judge", "weight": 2.0, "model": "judge",
                     "base_url": server.url, "api_key_env": "MEMFACTORY_JUDGE_KEY"}],
    }, TrainConfig)
    results = [_result("Paris", True, ""), _result("Rome", True, ""), _result(None, False, "")]
    server.requests.clear()
    totals, comps = compute_rewards(results, cfg.rewards, RewardContext(CharTokenizer()))
    assert comps["llm_judge"] == [1.0, 0.0, 0.0]
    assert totals == [2.0, 0.0, 0.0]
    assert len(server.requests) == 3 and server.auth[-1] == f"Bearer {SECRET}"
