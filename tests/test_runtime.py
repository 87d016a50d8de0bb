"""The batched runtime: one generate call per chunk index, traces, overflow handling."""

from __future__ import annotations

import copy
import re

import pytest

from memfactory_core.data.episode import QA, Episode
from memfactory_core.errors import MemFactoryError
from memfactory_core.pipeline import PipelineRuntime, load_spec, validate_spec
from tests.fakes import CharTokenizer, ScriptedLLM


def pipeline(chunk_tokens: int = 100, max_chunks: int | None = None, overflow: str = "keep_head",
             memory_tokens: int = 50):
    spec = copy.deepcopy(load_spec("memagent"))
    assert isinstance(spec, dict)
    spec["ingest"][0]["params"] = {"chunk_tokens": chunk_tokens, "max_chunks": max_chunks,
                                   "overflow": overflow}
    spec["memory"]["params"] = {"max_tokens": memory_tokens}
    return validate_spec(spec)


def episode(i: int, n_chars: int) -> Episode:
    return Episode(id=f"e{i}", context=("abcdefghij" * (n_chars // 10 + 1))[:n_chars],
                   questions=[QA(id=f"q{i}", question=f"question {i}?", answers=["x"])])


def reply(text: str) -> str:
    """Memory writer: append the chunk count; answerer: box the question number."""
    if "<text>" in text:
        notes = re.search(r"<notes>\n(.*?)\n</notes>", text, re.S).group(1)  # type: ignore[union-attr]
        return (notes + "|c").replace("No previous memory.", "")
    number = re.search(r"question (\d+)", text).group(1)  # type: ignore[union-attr]
    return f"The answer is \\boxed{{{number}}}."


def test_chunk_i_of_every_episode_goes_in_one_call() -> None:
    llm = ScriptedLLM(reply)
    runtime = PipelineRuntime(pipeline(chunk_tokens=100), llm)
    episodes = [episode(i, n_chars=100 * (1 + i % 4)) for i in range(16)]  # 1..4 chunks
    results = runtime.run(episodes)
    # 4 chunk indices + 1 answer call, however many episodes
    assert len(llm.calls) == 5
    assert [len(texts) for texts, _ in llm.calls] == [16, 12, 8, 4, 16]
    by_id = {r.episode.id: r for r in results}
    for i in range(16):
        r = by_id[f"e{i}"]
        assert r.answer == str(i)
        writes = r.trace.steps_of("memory_writer")
        assert len(writes) == 1 + i % 4
        assert [w.unit for w in writes] == list(range(1 + i % 4))
        assert writes[-1].memory_after == "|c" * (1 + i % 4)
        assert writes[0].memory_before == "No previous memory."
        answer_step = r.trace.steps_of("boxed_answerer")[0]
        assert answer_step.extra["boxed"] is True
        assert answer_step.batch_size == 16
        assert r.trace.final_memory == "|c" * (1 + i % 4)
        assert [t["component"] for t in r.turns][-1] == "boxed_answerer"


def test_memory_writer_bounded_and_max_new_tokens() -> None:
    llm = ScriptedLLM(lambda text: "y" * 500 if "<text>" in text else "\\boxed{a}")
    runtime = PipelineRuntime(pipeline(memory_tokens=30), llm)
    [result] = runtime.run([episode(0, 250)])
    assert all(params.max_new_tokens == 30 for _, params in llm.calls[:-1])
    assert llm.calls[-1][1].max_new_tokens == 64
    assert len(result.trace.final_memory) == 30


def test_think_blocks_are_stripped_from_memory() -> None:
    llm = ScriptedLLM(lambda t: "<think>hmm</think>kept" if "<text>" in t else "\\boxed{a}")
    [result] = PipelineRuntime(pipeline(), llm).run([episode(0, 50)])
    assert result.trace.final_memory == "kept"


def test_overflow_keep_head_keep_tail_and_error() -> None:
    tok = CharTokenizer()
    ctx = "A" * 100 + "B" * 100 + "C" * 100
    ep = Episode(id="e", context=ctx, questions=[QA(id="q", question="question 1?", answers=[])])
    seen: list[str] = []

    def record(text: str) -> str:
        if "<text>" in text:
            seen.append(re.search(r"<text>\n(.*?)\n</text>", text, re.S).group(1))  # type: ignore[union-attr]
        return "\\boxed{1}"

    runtime = PipelineRuntime(pipeline(chunk_tokens=100, max_chunks=2), ScriptedLLM(record),
                              tokenizer=tok)
    [r] = runtime.run([ep])
    assert seen == ["A" * 100, "B" * 100]
    assert r.trace.steps[0].extra == {"document_tokens": 300, "chunks": 2, "dropped_tokens": 100}
    seen.clear()
    runtime = PipelineRuntime(pipeline(chunk_tokens=100, max_chunks=2, overflow="keep_tail"),
                              ScriptedLLM(record))
    runtime.run([ep])
    assert seen == ["B" * 100, "C" * 100]
    runtime = PipelineRuntime(pipeline(chunk_tokens=100, max_chunks=2, overflow="error"),
                              ScriptedLLM(record))
    with pytest.raises(MemFactoryError, match="300 tokens"):
        runtime.run([ep])


def test_samples_make_independent_rollouts() -> None:
    llm = ScriptedLLM(reply)
    results = PipelineRuntime(pipeline(), llm).run([episode(0, 150), episode(1, 50)], samples=3)
    assert len(results) == 6
    assert sorted((r.episode.id, r.sample) for r in results) == [
        ("e0", 0), ("e0", 1), ("e0", 2), ("e1", 0), ("e1", 1), ("e1", 2)]
    assert [len(t) for t, _ in llm.calls] == [6, 3, 6]


def test_empty_document_still_answers() -> None:
    llm = ScriptedLLM(reply)
    ep = Episode(id="e", context="", questions=[QA(id="q", question="question 7?", answers=[])])
    [r] = PipelineRuntime(pipeline(), llm).run([ep])
    assert r.answer == "7"
    assert r.trace.final_memory == "No previous memory."


def test_missing_role_binding_is_an_error() -> None:
    with pytest.raises(MemFactoryError, match="policy"):
        PipelineRuntime(pipeline(), {"other": ScriptedLLM()})


def test_unboxed_answer_falls_back_to_text_or_empty() -> None:
    llm = ScriptedLLM(lambda t: "notes" if "<text>" in t else "just words")
    [r] = PipelineRuntime(pipeline(), llm).run([episode(0, 50)])
    assert r.answer == "just words"
    spec = copy.deepcopy(load_spec("memagent"))
    spec["query"][0]["params"]["fallback"] = "empty"  # type: ignore[index]
    [r] = PipelineRuntime(validate_spec(spec), llm).run([episode(0, 50)])
    assert r.answer == ""
    assert r.trace.steps_of("boxed_answerer")[0].extra["boxed"] is False


def test_long_documents_are_encoded_in_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    from memfactory_core.components import chunker

    monkeypatch.setattr(chunker, "ENCODE_WINDOW_CHARS", 64)
    text = " ".join(f"word{i}\nline" for i in range(200)) + "x" * 300  # a 300-char word at the end
    ids = chunker.encode_long(CharTokenizer(), text)
    assert CharTokenizer().decode(ids.tolist()) == text
    assert ids.itemsize == 4


def test_answer_prefix_is_continued_by_the_model() -> None:
    seen: list[list[dict]] = []

    class Recording(ScriptedLLM):
        def generate(self, prompts, params):  # type: ignore[no-untyped-def]
            seen.extend(prompts)
            return super().generate(prompts, params)

    llm = Recording(lambda t: "notes" if "<text>" in t else "Paris} and more")
    spec = copy.deepcopy(load_spec("memagent"))
    spec["query"][0]["params"]["answer_prefix"] = "Answer: \\boxed{"  # type: ignore[index]
    [r] = PipelineRuntime(validate_spec(spec), llm).run([episode(0, 50)])
    assert seen[-1][-1] == {"role": "assistant", "content": "Answer: \\boxed{"}
    assert r.answer == "Paris"
    assert r.trace.steps_of("boxed_answerer")[0].output == "Answer: \\boxed{Paris} and more"


class CountingTokenizer(CharTokenizer):
    def __init__(self) -> None:
        self.encoded_chars = 0

    def encode(self, text: str) -> list[int]:
        self.encoded_chars += len(text)
        return super().encode(text)


@pytest.mark.parametrize("overflow", ["keep_head", "keep_tail"])
def test_reading_stops_once_the_chunk_budget_is_full(monkeypatch: pytest.MonkeyPatch,
                                                     overflow: str) -> None:
    from memfactory_core.components import chunker

    monkeypatch.setattr(chunker, "ENCODE_WINDOW_CHARS", 64)
    text = " ".join(f"w{i:05d}" for i in range(100_000))  # 700 KB, one record
    tok = CountingTokenizer()
    seen: list[str] = []

    def record(t: str) -> str:
        if "<text>" in t:
            seen.append(re.search(r"<text>\n(.*?)\n</text>", t, re.S).group(1))  # type: ignore[union-attr]
        return "\\boxed{1}"

    runtime = PipelineRuntime(pipeline(chunk_tokens=16, max_chunks=2, overflow=overflow),
                              ScriptedLLM(record), tokenizer=tok)
    [r] = runtime.run([Episode(id="big", context=text,
                               questions=[QA(id="q", question="question 1?", answers=[])])])
    assert tok.encoded_chars < 64 * 3
    expected = [text[:16], text[16:32]] if overflow == "keep_head" else [text[-32:-16],
                                                                         text[-16:]]
    assert seen == expected
    extra = r.trace.steps[0].extra
    assert extra["chunks"] == 2 and extra["unread_chars"] > len(text) - 200
