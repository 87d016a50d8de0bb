"""An incremental search index over keyed texts: BM25, dense vectors, or both fused by RRF.

Edits are cheap: adding or changing a text updates only its postings and queues it for
embedding; queued texts are embedded together, in one batch, when the next dense search
needs them. Nothing is rebuilt or re-embedded as a whole. BM25 scores follow Lucene's
formula (as ``bm25s`` with ``method="lucene"``); dense scores are cosine similarities (a
matrix-vector product over unit vectors). Each key may carry a group (a speaker) to filter on.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from memfactory_core.errors import MemFactoryError
from memfactory_core.retrieval.embedders import Embedder
from memfactory_core.retrieval.text import tokenize


class SearchMode(StrEnum):
    BM25 = "bm25"
    DENSE = "dense"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class Hit:
    """One search result: the key of a text and its score (higher is better)."""

    key: str
    score: float


def rrf(rankings: Sequence[Sequence[str]], k: int = 60) -> list[Hit]:
    """Reciprocal rank fusion: ``sum 1 / (k + rank)`` over the rankings (rank from 1)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return [Hit(key, s) for key, s in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def _top(scores: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Row numbers of the ``k`` highest scores (among ``mask`` rows), best first."""
    if mask is not None:
        candidates = np.flatnonzero(mask)
        if candidates.size > k:
            part = np.argpartition(-scores[candidates], k - 1)[:k]
            candidates = candidates[part]
        return candidates[np.argsort(-scores[candidates], kind="stable")]
    top = np.argpartition(-scores, k - 1)[:k] if scores.size > k else np.arange(scores.size)
    return top[np.argsort(-scores[top], kind="stable")]


class SearchIndex:
    """Keyed texts searchable by BM25, by dense vectors (with an embedder) or both."""

    def __init__(self, embedder: Embedder | None = None, k1: float = 1.5, b: float = 0.75,
                 rrf_k: int = 60) -> None:
        self.embedder = embedder
        self.dim = embedder.dim if embedder is not None else None
        self.k1, self.b, self.rrf_k = k1, b, rrf_k
        self._rows: dict[str, int] = {}
        self._keys: list[str] = []
        self._alive = np.zeros(0, dtype=bool)
        self._group_of: list[str | None] = []
        self._doc_len = np.zeros(0, dtype=np.float32)
        self._terms: list[Counter[str]] = []
        self._postings: dict[str, dict[int, int]] = {}
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._total_len = 0.0
        self._n_alive = 0
        self._vectors = np.zeros((0, self.dim or 0), dtype=np.float32)
        self._has_vector = np.zeros(0, dtype=bool)
        self._pending: dict[int, str] = {}
        self.embedded_texts = 0  # how many texts were sent to the embedder (for benchmarks)

    # -- edits -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n_alive

    def __contains__(self, key: str) -> bool:
        row = self._rows.get(key)
        return row is not None and bool(self._alive[row])

    def _grow(self, need: int) -> None:
        cap = self._alive.size
        if need <= cap:
            return
        new = max(need, 2 * cap, 64)
        self._alive = np.concatenate([self._alive, np.zeros(new - cap, dtype=bool)])
        self._doc_len = np.concatenate([self._doc_len, np.zeros(new - cap, dtype=np.float32)])
        self._has_vector = np.concatenate([self._has_vector, np.zeros(new - cap, dtype=bool)])
        if self.dim is not None:
            grown = np.zeros((new, self.dim), dtype=np.float32)
            grown[:cap] = self._vectors
            self._vectors = grown

    def _unindex(self, row: int) -> None:
        for term in self._terms[row]:
            posting = self._postings[term]
            del posting[row]
            if not posting:
                del self._postings[term]
            self._arrays.pop(term, None)
        self._total_len -= float(self._doc_len[row])
        self._terms[row] = Counter()
        self._doc_len[row] = 0.0

    def upsert(self, key: str, text: str, group: str | None = None,
               vector: np.ndarray | None = None) -> None:
        """Add ``key`` or replace its text (and group); its vector is computed lazily."""
        row = self._rows.get(key)
        if row is None:
            row = len(self._keys)
            self._grow(row + 1)
            self._rows[key] = row
            self._keys.append(key)
            self._group_of.append(group)
            self._terms.append(Counter())
        else:
            if self._alive[row]:
                self._unindex(row)
                self._n_alive -= 1
            self._group_of[row] = group
        terms = Counter(tokenize(text))
        self._terms[row] = terms
        for term, tf in terms.items():
            self._postings.setdefault(term, {})[row] = tf
            self._arrays.pop(term, None)
        length = float(sum(terms.values()))
        self._doc_len[row] = length
        self._total_len += length
        self._alive[row] = True
        self._n_alive += 1
        self._has_vector[row] = False
        if vector is not None:
            self.set_vectors([key], np.asarray(vector, dtype=np.float32).reshape(1, -1))
        elif self.embedder is not None:
            self._pending[row] = text

    def remove(self, key: str) -> None:
        """Take ``key`` out of every search (a no-op when it is absent)."""
        row = self._rows.get(key)
        if row is None or not self._alive[row]:
            return
        self._unindex(row)
        self._alive[row] = False
        self._has_vector[row] = False
        self._pending.pop(row, None)
        self._n_alive -= 1

    def set_vectors(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Give keys their vectors directly; refuses vectors of another dimension."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.dim is None:
            raise MemFactoryError("this index has no embedder, so it holds no vectors")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            got = vectors.shape[1] if vectors.ndim == 2 else f"shape {vectors.shape}"
            model = self.embedder.model_name if self.embedder is not None else "?"
            raise MemFactoryError(
                f"vectors of dimension {got} refused: this index embeds with {model} "
                f"({self.dim} dimensions)"
            )
        if vectors.shape[0] != len(keys):
            raise MemFactoryError(f"{len(keys)} keys but {vectors.shape[0]} vectors")
        for key, vec in zip(keys, vectors, strict=True):
            row = self._rows.get(key)
            if row is None or not self._alive[row]:
                raise MemFactoryError(f"no entry {key!r} in the index")
            self._vectors[row] = vec
            self._has_vector[row] = True
            self._pending.pop(row, None)

    def flush(self) -> int:
        """Embed every queued text in one batch; returns how many were embedded."""
        if not self._pending or self.embedder is None:
            return 0
        rows = list(self._pending)
        vecs = self.embedder.embed([self._pending[r] for r in rows])
        self.embedded_texts += len(rows)
        self.set_vectors([self._keys[r] for r in rows], vecs)
        return len(rows)

    def clone(self) -> SearchIndex:
        """An independent copy sharing only the embedder."""
        embedder, self.embedder = self.embedder, None
        try:
            other = copy.deepcopy(self)
        finally:
            self.embedder = embedder
        other.embedder = embedder
        return other

    # -- search ------------------------------------------------------------------------

    def _mask(self, groups: Sequence[str] | None) -> np.ndarray | None:
        """Rows a search may return; None when that is every row."""
        n = len(self._keys)
        if groups is None and self._n_alive == n:
            return None
        mask = self._alive[:n].copy()
        if groups is not None:
            wanted = set(groups)
            mask &= np.fromiter((g in wanted for g in self._group_of), dtype=bool, count=n)
        return mask

    def _postings_arrays(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        cached = self._arrays.get(term)
        if cached is None:
            posting = self._postings.get(term)
            if not posting:
                return None
            rows = np.fromiter(posting.keys(), dtype=np.int64, count=len(posting))
            tfs = np.fromiter(posting.values(), dtype=np.float32, count=len(posting))
            cached = self._arrays[term] = (rows, tfs)
        return cached

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 (Lucene) score of every row; 0 for rows sharing no term with the query."""
        n = len(self._keys)
        scores = np.zeros(n, dtype=np.float32)
        if self._n_alive == 0:
            return scores
        avgdl = self._total_len / self._n_alive or 1.0
        norm = self.k1 * (1.0 - self.b + self.b * self._doc_len[:n] / avgdl)
        for term in set(tokenize(query)):
            arrays = self._postings_arrays(term)
            if arrays is None:
                continue
            rows, tfs = arrays
            df = rows.size
            idf = math.log(1.0 + (self._n_alive - df + 0.5) / (df + 0.5))
            scores[rows] += idf * tfs / (tfs + norm[rows])
        return scores

    def dense_scores(self, query: str | np.ndarray) -> np.ndarray:
        """Cosine similarity of every row to the query (embedded unless given as a vector)."""
        if self.embedder is None:
            raise MemFactoryError("dense search needs an index built with an embedder")
        self.flush()
        if isinstance(query, str):
            query = self.embedder.embed([query])[0]
        n = len(self._keys)
        return self._vectors[:n] @ np.asarray(query, dtype=np.float32)

    def search_vector(self, vector: np.ndarray, k: int,
                      groups: Sequence[str] | None = None) -> list[Hit]:
        """The ``k`` keys nearest to a query vector (cosine)."""
        scores = self.dense_scores(vector)
        return [Hit(self._keys[r], float(scores[r]))
                for r in _top(scores, k, self._mask(groups))]

    def search(self, query: str, k: int, mode: SearchMode | str = SearchMode.BM25,
               groups: Sequence[str] | None = None) -> list[Hit]:
        """The ``k`` best keys for ``query`` (only keys whose group is in ``groups``, if given).

        BM25 returns only keys sharing a term with the query; dense returns the nearest
        keys; hybrid fuses both rankings (each cut at ``max(k, 50)``) by RRF."""
        if k < 1:
            raise MemFactoryError(f"k must be at least 1, got {k}")
        mode = SearchMode(mode)
        if mode == SearchMode.HYBRID:
            depth = max(k, 50)
            lexical = [h.key for h in self.search(query, depth, SearchMode.BM25, groups)]
            dense = [h.key for h in self.search(query, depth, SearchMode.DENSE, groups)]
            return rrf([lexical, dense], self.rrf_k)[:k]
        mask = self._mask(groups)
        if mode == SearchMode.BM25:
            scores = self.bm25_scores(query)
            matched = scores > 0
            mask = matched if mask is None else mask & matched
        else:
            scores = self.dense_scores(query)
        return [Hit(self._keys[r], float(scores[r])) for r in _top(scores, k, mask)]
