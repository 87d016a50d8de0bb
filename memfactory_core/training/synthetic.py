"""A synthetic memory task: key-value facts scattered among filler sentences over a long
text, and a question about one key. Small, seeded and built in code, so training can be
checked anywhere (``data.synthetic`` in a training config)."""

from __future__ import annotations

import random

from memfactory_core.data.episode import QA, Episode

KEYS = ("river", "garden", "library", "castle", "bridge", "island", "museum", "forest",
        "village", "planet", "engine", "school")
VALUES = ("red", "blue", "green", "golden", "old", "new", "dark", "quiet")
_FILLER_SUBJECTS = ("The teacher", "A student", "The author", "The team", "A doctor", "The player")
_FILLER_VERBS = ("read", "visited", "remembered", "studied", "found", "opened")
_FILLER_OBJECTS = ("a book", "the letter", "a song", "the summary", "a story", "the film")


def fact_sentence(key: str, value: str) -> str:
    return f"The {key} is {value}."


def question_for(key: str) -> str:
    return f"What colour is the {key}?"


def _filler(rng: random.Random) -> str:
    subject, verb = rng.choice(_FILLER_SUBJECTS), rng.choice(_FILLER_VERBS)
    return f"{subject} {verb} {rng.choice(_FILLER_OBJECTS)}."


def build_episode(
    index: int,
    rng: random.Random,
    facts: int = 4,
    filler_sentences: int = 4,
    keys: tuple[str, ...] | list[str] = KEYS,
    values: tuple[str, ...] | list[str] = VALUES,
) -> Episode:
    """One document of ``facts`` distinct keys with random values, ``filler_sentences``
    distractors after each fact, and one question about a random key among them."""
    if facts > len(keys):
        raise ValueError(f"{facts} facts need at least as many keys, got {len(keys)}")
    chosen = rng.sample(list(keys), facts)
    assigned = {k: rng.choice(list(values)) for k in chosen}
    sentences: list[str] = []
    for k in chosen:
        sentences.append(fact_sentence(k, assigned[k]))
        sentences.extend(_filler(rng) for _ in range(filler_sentences))
    target = rng.choice(chosen)
    qa = QA(id="q0", question=question_for(target), answers=[assigned[target]],
            meta={"key": target, "position": chosen.index(target)})
    return Episode(id=f"kv-{index}", context=" ".join(sentences), questions=[qa],
                   meta={"facts": assigned})


def build_synthetic(
    n: int,
    facts: int = 4,
    filler_sentences: int = 4,
    keys: list[str] | None = None,
    values: list[str] | None = None,
    seed: int = 0,
) -> list[Episode]:
    """``n`` key-value episodes, identical for the same arguments."""
    rng = random.Random(seed)
    return [build_episode(i, rng, facts, filler_sentences, keys or KEYS, values or VALUES)
            for i in range(n)]
