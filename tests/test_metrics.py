"""Answer metrics, boxed extraction, think stripping and bootstrap statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memfactory_core.metrics import (
    avg_at_k,
    bootstrap_ci,
    exact_match,
    extract_boxed,
    f1,
    normalize_answer,
    strip_think,
    sub_exact_match,
    summarize,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  an  Apple, a day!  ", "apple day"),
        ("Theatre of the Absurd", "theatre of absurd"),
        ("U.S.A.", "usa"),
        ("a an the", ""),
        ("Rock'n'Roll\tband\n", "rocknroll band"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match() -> None:
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("Eiffel", ["Tower", "eiffel"]) == 1.0
    assert exact_match("Eiffel Tower in Paris", "Eiffel Tower") == 0.0
    assert exact_match("anything", []) == 0.0


def test_sub_exact_match() -> None:
    assert sub_exact_match("It is Paris, France.", "paris") == 1.0
    assert sub_exact_match("It is Paris", ["London", "Paris"]) == 1.0
    assert sub_exact_match("Paris", "Paris, France") == 0.0  # prediction inside gold: no
    assert sub_exact_match("", "Paris") == 0.0
    assert sub_exact_match("anything", "The") == 0.0  # gold normalises to nothing
    assert sub_exact_match("the", "The") == 1.0
    assert sub_exact_match("x", []) == 0.0


def test_f1() -> None:
    assert f1("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    assert f1("cat", ["dog", "cat"]) == 1.0
    assert f1("dog", "cat") == 0.0
    assert f1("", "") == 1.0
    assert f1("", "cat") == 0.0
    assert f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1("x", []) == 0.0


def test_extract_boxed() -> None:
    assert extract_boxed(r"so \boxed{Paris}") == "Paris"
    assert extract_boxed(r"\boxed{1} then \boxed{2}") == "2"
    assert extract_boxed(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\text{New {York}} City}") == r"\text{New {York}} City"
    assert extract_boxed(r"\boxed{\boxed{x}}") == r"\boxed{x}"
    assert extract_boxed(r"\boxed {spaced}") == "spaced"
    assert extract_boxed(r"\boxed{}") == ""
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_boxed(r"\boxed{ok} and \boxed{unclosed") == "ok"


def test_strip_think() -> None:
    assert strip_think("<think>hmm</think>The answer") == "The answer"
    assert strip_think("a<think>x</think>b<THINK>y\nz</THINK>c") == "abc"
    assert strip_think("<think>still thinking when cut off") == ""
    assert strip_think("Answer \\boxed{1} <think>more") == "Answer \\boxed{1} "
    assert strip_think("opened in the prompt</think>\\boxed{2}") == "\\boxed{2}"
    assert strip_think("plain") == "plain"


def test_bootstrap_contains_mean_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    values = (rng.random(200) < 0.3).astype(float).tolist()
    mean, low, high = bootstrap_ci(values)
    assert mean == pytest.approx(float(np.mean(values)))
    assert low < mean < high
    assert bootstrap_ci(values) == (mean, low, high)
    assert bootstrap_ci(values, seed=1) != (mean, low, high)
    _, low90, high90 = bootstrap_ci(values, confidence=0.9)
    assert low <= low90 and high90 <= high
    # roughly the normal-approximation width for a proportion
    se = math.sqrt(mean * (1 - mean) / len(values))
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_bootstrap_edge_cases() -> None:
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([0.0] * 10) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 0.0], confidence=1.5)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])


def test_bootstrap_large_input_in_blocks() -> None:
    values = np.random.default_rng(0).random(20_000).tolist()
    mean, low, high = bootstrap_ci(values, n_resamples=500)
    assert low < mean < high and high - low < 0.02


def test_avg_at_k() -> None:
    assert avg_at_k([[1.0, 0.0], [1.0, 1.0, 1.0], [0.0]]) == [0.5, 1.0, 0.0]
    with pytest.raises(ValueError, match="question 1"):
        avg_at_k([[1.0], []])


def test_summarize() -> None:
    out = summarize({"em": [1.0, 0.0, 1.0, 1.0], "f1": [0.5]})
    assert out["em"] == 0.75
    assert len(out["em_ci95"]) == 2 and out["em_ci95"][0] <= 0.75 <= out["em_ci95"][1]
    assert out["f1"] == 0.5 and out["f1_ci95"] == [0.5, 0.5]
    assert set(summarize({"em": [1.0, 0.0]}, confidence=0.9)) == {"em", "em_ci90"}


def test_locomo_f1_follows_the_official_category_rules() -> None:
    from memfactory_core.metrics.locomo import bleu1, locomo_f1, recall_at_k, token_f1

    # stemming and LoCoMo's normalisation (commas, a/an/the/and dropped)
    assert token_f1("running and jumping", "runs, jumps") == 1.0
    assert locomo_f1("7 May 2023", "7 May, 2023", 2) == 1.0
    # multi-hop: gold split on commas, best predicted part per gold part, averaged
    assert locomo_f1("Oslo, Bergen", "Bergen, Paris", 1) == pytest.approx(0.5)
    assert locomo_f1("Oslo Bergen", "Bergen, Paris", 1) == pytest.approx((2 / 3) / 2)
    # open-domain: gold cut at the first ';'
    assert locomo_f1("likely yes", "likely yes; she loves hiking", 3) == 1.0
    assert locomo_f1("likely yes", "likely yes; she loves hiking", 4) < 1.0
    # adversarial: abstention scores, anything else does not
    assert locomo_f1("It is not mentioned in the conversation", "x", 5) == 1.0
    assert locomo_f1("No information available", "x", 5) == 1.0
    assert locomo_f1("Rex", "Not mentioned in the conversation", 5) == 0.0
    assert bleu1("the city library", "the city library") == pytest.approx(1.0)
    assert bleu1("city", "the city library") < 0.5 and bleu1("", "x") == 0.0
    assert recall_at_k([["D1:1"], ["D2:1", "D1:3"]], ["D1:3", "D9:9"], 2) == 0.5
    assert recall_at_k([["D1:1"], ["D1:3"]], ["D1:3"], 1) == 0.0
    assert recall_at_k([["D1:1"]], [], 5) is None
