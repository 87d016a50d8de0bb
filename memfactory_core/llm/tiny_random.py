"""``tiny-random``: a 2-layer Qwen2 with a locally trained byte-level BPE tokenizer.

Built offline in a few seconds and bit-for-bit deterministic (fixed seeds, corpus generated
in code). It writes nothing useful, but it exercises every code path (chat template,
batched generation, LoRA training) at the speed of a unit test. ``initializer_range=0.2``
makes its logits peaked enough that LoRA with a high learning rate visibly moves it.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from memfactory_core.llm._atomic import atomic_build

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
VOCAB_SIZE = 2000
SEED = 1234

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_NOUNS = _words(
    "document memory question answer agent model chunk context token reward policy river "
    "city mountain river garden library teacher student author book film song album team "
    "player season election president company market village island bridge castle war "
    "treaty language science planet star ocean forest animal bird horse engine train ship "
    "doctor hospital school university museum painting church river valley desert summer "
    "winter morning evening story letter number result evidence session speaker topic "
    "summary entry bank retriever reranker reflection"
)
_VERBS = _words(
    "is was wrote read found built won lost made saw gave took kept moved opened closed "
    "visited played studied answered asked remembered forgot stored updated deleted added "
    "merged retrieved ranked compressed summarised"
)
_ADJS = _words(
    "old new small large first last famous early late bright dark quiet long short red blue "
    "green golden ancient modern northern southern final relevant correct wrong"
)
_NAMES = _words(
    "Alice Bob Carol David Emma Frank Grace Henry Irene James Kate Louis Maria Nina Oscar "
    "Paris London Berlin Tokyo Cairo Lima Oslo Rome Vienna Dublin Melanie Caroline"
)
_FUNCTION = _words("the a an of in on at by with from to for and or but that which who")
_TEMPLATES = (
    "Document {num2}: {Name} {verb} the {adj} {noun} in {year}.",
    "Question: Which {noun} did {Name} {verb} in {year}?",
    "Answer: the {adj} {noun}. The final answer is \\boxed{{{Name}}}.",
    "The memory says that {Name} {verb} {num} {noun}s near {Name2}.",
    "Updated memory: {Name} ({year}) {verb} a {adj} {noun}; {Name2} did not.",
    '{Name} said, "I {verb} the {noun} at {hour}:{minute} on {day}/{month}/{year}!"',
    "Q: how many {noun}s? A: {num}. Evidence: D{num}:{num2}.",
    "<problem> {Name} {verb} the {noun} </problem> <memory> {adj} {noun} </memory>",
    "[{num}] {Name} - {adj} {noun}, {num2}% of {num3} ({Name2}, {year}).",
    "Is the {noun} {adj}? Yes, it is; no, it isn't: {num} + {num2} = {sum}.",
)
_PUNCT_LINES = (
    "Hello, world! How are you? I'm fine - thanks... (really) [yes] {ok} <tag> #1 @home",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 1,000 -7 +8 50% $9.99 1/2 x=y*z",
    "Symbols: ~ ` ! @ # $ % ^ & * ( ) _ - + = { } [ ] | \\ : ; \" ' < > , . ? /",
    "ADD UPDATE DELETE NOOP: memory operations. <think> reasoning </think> <answer>",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber \u00e5ngstr\u00f6m \u00b5 "
    "\u2014 \u2013 \u201cquotes\u201d \u2018single\u2019",
)


_SYLLABLES = _words(
    "ka lo mi ra ten sor vel an is ur ba de fi go hu jo ne pe qui ta vo we xi ze str th ch "
    "sh ing er ion al ous ment ly"
)


def _pseudo_words(rng: random.Random, count: int) -> list[str]:
    words = {
        "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(count)
    }
    return sorted(words)


def build_corpus(lines: int = 1500, seed: int = SEED) -> list[str]:
    """Deterministic English-like training text for the tokenizer (and smoke tests)."""
    rng = random.Random(seed)
    extra = _pseudo_words(rng, 400)
    nouns = [*_NOUNS, *extra[::2]]
    names = [*_NAMES, *(w.capitalize() for w in extra[1::2])]
    out = list(_PUNCT_LINES)
    while len(out) < lines:
        num, num2 = rng.randint(0, 999), rng.randint(0, 99)
        fields = {
            "Name": rng.choice(names),
            "Name2": rng.choice(names),
            "verb": rng.choice(_VERBS),
            "adj": rng.choice(_ADJS),
            "noun": rng.choice(nouns),
            "year": rng.randint(1800, 2030),
            "num": num,
            "num2": num2,
            "num3": rng.randint(0, 9999),
            "sum": num + num2,
            "hour": f"{rng.randint(0, 23):02d}",
            "minute": f"{rng.randint(0, 59):02d}",
            "day": rng.randint(1, 28),
            "month": rng.randint(1, 12),
        }
        sentence = rng.choice(_TEMPLATES).format(**fields)
        filler = " ".join(
            rng.choice(_FUNCTION if i % 2 else nouns + list(_ADJS))
            for i in range(rng.randint(0, 8))
        )
        out.append(f"{sentence} {filler}".strip())
    return out


def _train_tokenizer():  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    return tok


def build_tiny_random(path: str | Path) -> Path:
    """Build the tiny-random model folder at ``path`` (kept as is if it already exists)."""
    return atomic_build(Path(path), _build_into)


def _build_into(folder: Path) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(),
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
        model_max_length=32768,
    )
    tok.save_pretrained(folder)

    pad_id = tok.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tok.convert_tokens_to_ids(IM_END)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        initializer_range=0.2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False).save_pretrained(
        folder
    )


if __name__ == "__main__":  # pragma: no cover - manual timing helper
    import sys

    t0 = time.perf_counter()
    print(build_tiny_random(sys.argv[1]), f"{time.perf_counter() - t0:.2f}s")
