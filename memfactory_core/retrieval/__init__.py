"""Retrieval: embedders, an incremental BM25 + dense index, reciprocal rank fusion."""

from memfactory_core.retrieval.embedders import (
    Embedder,
    HashingEmbedder,
    MiniLMEmbedder,
    load_embedder,
)
from memfactory_core.retrieval.index import Hit, SearchIndex, SearchMode, rrf
from memfactory_core.retrieval.text import tokenize

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "Hit",
    "MiniLMEmbedder",
    "SearchIndex",
    "SearchMode",
    "load_embedder",
    "rrf",
    "tokenize",
]
