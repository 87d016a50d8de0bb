"""TransformersBackend on tiny-random: batching, padding, limits, stop strings, seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from memfactory_core.errors import MemFactoryError
from memfactory_core.llm import Prompt, SamplingParams, load_backend
from memfactory_core.llm.transformers_backend import TransformersBackend


def _prompt(i: int) -> Prompt:
    words = " ".join(["memory", "question", "Document", "answer"][j % 4] for j in range(i * 3))
    return [{"role": "user", "content": f"Question {i}: {words}"}]


PROMPTS = [_prompt(i) for i in (3, 0, 7, 1, 5, 2, 9, 4, 6, 8)]


@pytest.fixture(scope="module")
def backend() -> TransformersBackend:
    b = load_backend("tiny-random", max_batch_size=4)
    assert isinstance(b, TransformersBackend)
    return b


def test_batched_greedy_equals_one_at_a_time(backend: TransformersBackend) -> None:
    params = SamplingParams(max_new_tokens=24)
    batched = backend.generate(PROMPTS, params)
    singles = [backend.generate([p], params)[0] for p in PROMPTS]
    assert [g.completion_ids for g in batched] == [g.completion_ids for g in singles]
    assert [g.text for g in batched] == [g.text for g in singles]
    assert [g.prompt_ids for g in batched] == backend.encode_prompts(PROMPTS)


def test_left_padding_and_micro_batches(
    backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = backend.model.generate

    def spy(**kwargs: Any) -> torch.Tensor:
        seen.append((kwargs["input_ids"], kwargs["attention_mask"]))
        return real(**kwargs)

    monkeypatch.setattr(backend.model, "generate", spy)
    backend.generate(PROMPTS, SamplingParams(max_new_tokens=2))
    assert [ids.shape[0] for ids, _ in seen] == [4, 4, 2]
    lengths = sorted((len(ids) for ids in backend.encode_prompts(PROMPTS)), reverse=True)
    for k, (ids, mask) in enumerate(seen):
        assert mask[:, -1].all()  # every prompt ends at the right edge
        rows = mask.sum(dim=1).tolist()
        assert rows == lengths[4 * k : 4 * k + len(rows)]  # sorted by length within the call
        assert (ids[mask == 0] == backend.pad_token_id).all()
        for row, n in enumerate(rows):
            assert not mask[row, : ids.shape[1] - n].any()


@pytest.mark.parametrize("limit", [1, 5, 17])
def test_max_new_tokens(backend: TransformersBackend, limit: int) -> None:
    for gen in backend.generate(PROMPTS, SamplingParams(max_new_tokens=limit)):
        assert 1 <= gen.completion_tokens <= limit
        if gen.finish_reason == "length":
            assert gen.completion_tokens == limit
        else:
            assert gen.completion_ids is not None
            assert gen.completion_ids[-1] in backend.eos_token_ids


def test_token_fields_consistent(backend: TransformersBackend) -> None:
    gens = backend.generate(PROMPTS, SamplingParams(max_new_tokens=40, temperature=1.0, seed=3))
    for prompt, gen in zip(PROMPTS, gens, strict=True):
        assert gen.prompt_ids is not None and gen.completion_ids is not None
        assert gen.prompt_tokens == len(gen.prompt_ids)
        assert gen.completion_tokens == len(gen.completion_ids)
        assert gen.prompt_ids == backend.encode_prompts([prompt])[0]
        eos_positions = [i for i, t in enumerate(gen.completion_ids) if t in backend.eos_token_ids]
        if gen.finish_reason == "stop":
            assert eos_positions == [len(gen.completion_ids) - 1]
        else:
            assert eos_positions == [] and gen.completion_tokens == 40
        decoded = backend.hf_tokenizer.decode(gen.completion_ids, skip_special_tokens=True)
        assert decoded == gen.text


def test_stop_strings(backend: TransformersBackend) -> None:
    free = backend.generate(PROMPTS, SamplingParams(max_new_tokens=32))
    tested = 0
    for prompt, ref in zip(PROMPTS, free, strict=True):
        text = ref.text
        if len(text) < 12:
            continue
        k = len(text) // 2
        stop = text[k : k + 3]
        cut = text.find(stop)
        [gen] = backend.generate([prompt], SamplingParams(max_new_tokens=32, stop=(stop, "@@@")))
        assert gen.text == text[:cut]
        assert gen.finish_reason == "stop"
        assert gen.completion_ids is not None and ref.completion_ids is not None
        assert gen.completion_ids == ref.completion_ids[: len(gen.completion_ids)]
        decode = backend.hf_tokenizer.decode
        assert stop in decode(gen.completion_ids, skip_special_tokens=True)
        assert stop not in decode(gen.completion_ids[:-1], skip_special_tokens=True)
        assert gen.completion_tokens == len(gen.completion_ids)
        tested += 1
    assert tested >= 3

    # In a batch, rows that never meet a stop string are unaffected.
    batched = backend.generate(PROMPTS, SamplingParams(max_new_tokens=32, stop=("@@@",)))
    assert [g.text for g in batched] == [g.text for g in free]


def test_seed_makes_sampling_reproducible(backend: TransformersBackend) -> None:
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=11)
    first = backend.generate(PROMPTS, params)
    again = backend.generate(PROMPTS, params)
    other = backend.generate(PROMPTS, SamplingParams(16, temperature=1.0, seed=12))
    assert [g.completion_ids for g in first] == [g.completion_ids for g in again]
    assert [g.completion_ids for g in first] != [g.completion_ids for g in other]
    group = backend.generate([PROMPTS[0]] * 6, params)
    assert len({tuple(g.completion_ids or ()) for g in group}) > 1  # a GRPO group varies


def test_repetition_penalty_changes_greedy_output(backend: TransformersBackend) -> None:
    plain = backend.generate(PROMPTS[:4], SamplingParams(max_new_tokens=32))
    penal = backend.generate(PROMPTS[:4], SamplingParams(max_new_tokens=32, repetition_penalty=2.0))
    assert [g.completion_ids for g in plain] != [g.completion_ids for g in penal]


def test_tokenizer_has_no_special_tokens(backend: TransformersBackend) -> None:
    text = "Memory: Alice visited Paris in 1999."
    ids = backend.tokenizer.encode(text)
    assert backend.tokenizer.decode(ids) == text
    assert backend.hf_tokenizer.convert_tokens_to_ids("<|im_start|>") not in ids
    assert backend.count_tokens(text) == len(ids)


def test_empty_batch(backend: TransformersBackend) -> None:
    assert backend.generate([], SamplingParams()) == []


def test_from_loaded_model_keeps_training_mode(backend: TransformersBackend) -> None:
    model, tok = backend.model, backend.hf_tokenizer
    model.train()
    try:
        wrapped = TransformersBackend(model, tok, model_name="in-training")
        assert model.training
        [gen] = wrapped.generate([PROMPTS[0]], SamplingParams(max_new_tokens=4))
        assert model.training
    finally:
        model.eval()
    assert gen.completion_tokens <= 4
    assert wrapped.model_name == "in-training"
    with pytest.raises(MemFactoryError, match="tokenizer"):
        TransformersBackend(model)


def test_peft_model(backend: TransformersBackend) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from memfactory_core.llm.models import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-random"))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    wrapped = TransformersBackend(peft_model, backend.hf_tokenizer)
    params = SamplingParams(max_new_tokens=12)
    # LoRA starts as a no-op (B = 0): same greedy output as the plain model.
    assert [g.completion_ids for g in wrapped.generate(PROMPTS[:3], params)] == [
        g.completion_ids for g in backend.generate(PROMPTS[:3], params)
    ]


def test_bad_options(tmp_path: Path) -> None:
    from memfactory_core.llm.models import resolve_model_path

    with pytest.raises(MemFactoryError, match="cannot load a model"):
        TransformersBackend(tmp_path)
    path = resolve_model_path("tiny-random")
    with pytest.raises(MemFactoryError, match="max_batch_size"):
        TransformersBackend(path, max_batch_size=0)
    with pytest.raises(MemFactoryError, match="dtype"):
        TransformersBackend(path, dtype="float8")


def test_prompt_ending_with_assistant_message_is_continued(backend: TransformersBackend) -> None:
    prompt: Prompt = [{"role": "user", "content": "Name a city."},
                      {"role": "assistant", "content": "Answer: \\boxed{"}]
    [text] = backend.render_prompts([prompt])
    assert text.endswith("<|im_start|>assistant\nAnswer: \\boxed{")
    [plain] = backend.render_prompts([prompt[:1]])
    assert plain.endswith("<|im_start|>assistant\n")
    [gen] = backend.generate([prompt], SamplingParams(max_new_tokens=4))
    assert gen.prompt_ids == backend.encode_prompts([prompt])[0]


def test_choices_constrain_every_reply_to_one_of_its_prompts_choices(
        backend: TransformersBackend) -> None:
    choices = [['{"event": "ADD"}', '{"event": "NOOP"}'],
               ['{"event": "DELETE", "id": "m7"}', '{"event": "UPDATE", "id": "m12"}'],
               ["yes", "no", "not sure"]] * 3
    prompts = PROMPTS[: len(choices)]
    for params in (SamplingParams(max_new_tokens=64),
                   SamplingParams(max_new_tokens=64, temperature=1.0, seed=3)):
        gens = backend.generate(prompts, params, choices)
        assert [g.text in c for g, c in zip(gens, choices, strict=True)] == [True] * len(choices)
        # the reply ends with EOS right after the choice (kept in the ids, as training needs)
        assert all(g.completion_ids[-1] in backend.eos_token_ids for g in gens)
        assert all(g.finish_reason == "stop" for g in gens)
    free = backend.generate(prompts[:2], SamplingParams(max_new_tokens=24))
    assert any(g.text not in c for g, c in zip(free, choices, strict=False))


def test_sampled_choices_follow_the_model_not_a_fixed_pick(backend: TransformersBackend) -> None:
    options = [f"option {c}" for c in "abcdefgh"]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=0)
    picked = {g.text for g in backend.generate([PROMPTS[0]] * 24, params, [options] * 24)}
    assert picked <= set(options) and len(picked) > 1
