"""The incremental search index: BM25 equal to bm25s after edits, dense, hybrid, groups."""

from __future__ import annotations

import bm25s
import numpy as np
import pytest

from memfactory_core.errors import MemFactoryError
from memfactory_core.retrieval import HashingEmbedder, SearchIndex, rrf, tokenize

DOCS = {
    "a": "Ann lives in Oslo with her cat",
    "b": "Bo has a cat and a dog",
    "c": "The dog likes Oslo parks in spring",
    "d": "Bergen is rainy in autumn",
    "e": "cats cats cats everywhere",
}


def reference_scores(docs: dict[str, str], query: str) -> dict[str, float]:
    keys = list(docs)
    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index([tokenize(docs[k]) for k in keys], show_progress=False)
    return dict(zip(keys, ref.get_scores(tokenize(query)).tolist(), strict=True))


def index_scores(index: SearchIndex, keys: list[str], query: str) -> dict[str, float]:
    scores = index.bm25_scores(query)
    return {k: float(scores[index._rows[k]]) for k in keys}


def test_bm25_matches_bm25s_before_and_after_edits() -> None:
    index = SearchIndex()
    docs = dict(DOCS)
    for k, text in docs.items():
        index.upsert(k, text)
    for query in ["cat in Oslo", "rainy dog", "spring parks"]:
        ref = reference_scores(docs, query)
        assert index_scores(index, list(docs), query) == pytest.approx(ref, rel=1e-5)
    index.remove("e")
    index.upsert("b", "Bo has two dogs and no cat")
    index.upsert("f", "Oslo in winter is dark")
    docs.pop("e")
    docs["b"] = "Bo has two dogs and no cat"
    docs["f"] = "Oslo in winter is dark"
    for query in ["cat in Oslo", "dogs", "winter"]:
        ref = reference_scores(docs, query)
        assert index_scores(index, list(docs), query) == pytest.approx(ref, rel=1e-5)
    assert "e" not in index and len(index) == 5
    ref = reference_scores(docs, "cats")
    expected = sorted((k for k in docs if ref[k] > 0), key=lambda k: -ref[k])
    assert [h.key for h in index.search("cats", 5)] == expected and len(expected) == 2


def test_dense_search_is_brute_force_cosine_and_embeds_only_what_changed() -> None:
    emb = HashingEmbedder(64)
    index = SearchIndex(emb)
    for k, text in DOCS.items():
        index.upsert(k, text)
    hits = index.search("cat in Oslo", 3, "dense")
    vecs = emb.embed(list(DOCS.values()))
    brute = vecs @ emb.embed(["cat in Oslo"])[0]
    order = [list(DOCS)[i] for i in np.argsort(-brute, kind="stable")[:3]]
    assert [h.key for h in hits] == order
    assert index.embedded_texts == 5
    index.upsert("d", "Bergen has cats too")
    index.search("cat", 2, "dense")
    index.search("dog", 2, "dense")
    assert index.embedded_texts == 6  # only the changed entry, once


def test_hybrid_is_rrf_of_both_rankings_and_groups_filter() -> None:
    index = SearchIndex(HashingEmbedder(64))
    for k, text in DOCS.items():
        index.upsert(k, text, group="Ann" if k in "ac" else "Bo")
    lexical = [h.key for h in index.search("cat Oslo", 50, "bm25")]
    dense = [h.key for h in index.search("cat Oslo", 50, "dense")]
    fused = index.search("cat Oslo", 3, "hybrid")
    assert fused == rrf([lexical, dense])[:3]
    assert {h.key for h in index.search("cat Oslo", 5, "hybrid", groups=["Ann"])} <= {"a", "c"}


def test_vectors_of_another_dimension_are_refused() -> None:
    index = SearchIndex(HashingEmbedder(64))
    index.upsert("a", "text")
    with pytest.raises(MemFactoryError, match=r"dimension 32 refused.*hashing-64 \(64"):
        index.set_vectors(["a"], np.zeros((1, 32), dtype=np.float32))
    with pytest.raises(MemFactoryError, match="dense search needs"):
        SearchIndex().search("x", 1, "dense")
