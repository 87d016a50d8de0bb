"""RMM's retrospective reflection: a small torch reranker over the retriever's top-K.

Query and memory embeddings get a residual linear adaptation, ``q' = q + W_q q`` and
``m' = m + W_m m``; a memory's score is ``q' . m'``. Selection adds Gumbel noise to the scores
divided by a temperature and keeps the top M: a sample, without replacement, from the softmax
of the scores at that temperature (the Gumbel-top-k trick). Its log-probability is the
Plackett-Luce product of the picks, which REINFORCE and GRPO train. Without noise the top M
are the highest scores. ``W_q`` and ``W_m`` start at zero, so an untrained reranker ranks as
the dense retriever does.

With ``lexical`` the score adds ``w * overlap``, a learned weight (starting at zero) times the
share of the question's content words found in the memory (see ``features``).

Checkpoints are safetensors files that record the embedding dimension and model; loading one
for another dimension is refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from memfactory_core.errors import MemFactoryError

CHECKPOINT_FORMAT = "memfactory-reranker/1"
WEIGHTS_FILE = "reranker.safetensors"


class RerankerModule(nn.Module):
    """Residual linear adaptation of query and memory embeddings; scores are dot products."""

    def __init__(self, dim: int, embedder: str | None = None, lexical: bool = False) -> None:
        super().__init__()
        if dim < 1:
            raise MemFactoryError(f"reranker dimension must be positive, got {dim}")
        self.dim = dim
        self.embedder = embedder
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_m = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.w_q.weight)
        nn.init.zeros_(self.w_m.weight)
        self.lexical = lexical
        self.lexical_weight = nn.Parameter(torch.zeros(())) if lexical else None

    def scores(self, query: torch.Tensor, memories: torch.Tensor,
               overlap: torch.Tensor | None = None) -> torch.Tensor:
        """``q' . m'`` for queries ``(B, d)`` and their candidates ``(B, K, d)``: ``(B, K)``;
        a lexical reranker adds its weight times ``overlap`` ``(B, K)``."""
        if query.shape[-1] != self.dim or memories.shape[-1] != self.dim:
            raise MemFactoryError(
                f"reranker expects {self.dim}-dimensional embeddings, got query "
                f"{tuple(query.shape)} and memories {tuple(memories.shape)}")
        q = query + self.w_q(query)
        m = memories + self.w_m(memories)
        scores = torch.einsum("bd,bkd->bk", q, m)
        if self.lexical_weight is not None:
            if overlap is None or overlap.shape != scores.shape:
                raise MemFactoryError(
                    f"this reranker weighs word overlap: it needs a {tuple(scores.shape)} "
                    "overlap tensor")
            scores = scores + self.lexical_weight * overlap
        return scores

    def forward(self, query: torch.Tensor, memories: torch.Tensor,
                overlap: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores(query, memories, overlap)


@dataclass
class Selection:
    """Chosen candidates per query, in pick order, and the log-probability of each pick."""

    indices: torch.Tensor  # (B, M) long; -1 where a query had fewer than M candidates
    log_probs: torch.Tensor  # (B, M); 0 where indices is -1

    @property
    def valid(self) -> torch.Tensor:
        return self.indices >= 0


def select_top_m(scores: torch.Tensor, top_m: int, temperature: float = 1.0,
                 mask: torch.Tensor | None = None, sample: bool = True,
                 generator: torch.Generator | None = None) -> Selection:
    """Top-M of ``scores`` ``(B, K)`` after Gumbel noise (``sample``) at ``temperature``, with
    the Plackett-Luce log-probability of each pick under ``softmax(scores / temperature)``.
    ``mask`` (B, K) marks real candidates (padding is never picked)."""
    if temperature <= 0:
        raise MemFactoryError(f"temperature must be positive, got {temperature}")
    logits = scores / temperature
    if mask is None:
        mask = torch.ones_like(logits, dtype=torch.bool)
    logits = logits.masked_fill(~mask, float("-inf"))
    keys = logits.detach()
    if sample:
        u = torch.rand(keys.shape, generator=generator, dtype=keys.dtype).clamp_(1e-10, 1.0)
        keys = keys - torch.log(-torch.log(u))
    m = min(top_m, logits.shape[1])
    order = torch.topk(keys, m, dim=1).indices  # (B, m)
    counts = mask.sum(dim=1)  # (B,)
    rank = torch.arange(m).unsqueeze(0)
    valid = rank < counts.unsqueeze(1)
    log_probs = []
    remaining = logits
    for j in range(m):
        idx = order[:, j:j + 1]
        norm = torch.logsumexp(remaining, dim=1, keepdim=True)
        picked = remaining.gather(1, idx)
        lp = (picked - norm).squeeze(1)
        lp = torch.where(valid[:, j], lp, torch.zeros_like(lp))
        log_probs.append(lp)
        remaining = remaining.scatter(1, idx, float("-inf"))
    indices = torch.where(valid, order, torch.full_like(order, -1))
    lps = torch.stack(log_probs, dim=1) if log_probs else torch.zeros(scores.shape[0], 0)
    return Selection(indices=indices, log_probs=lps)


# ------------------------------------------------------------------ checkpoints
def save_reranker(module: RerankerModule, path: str | Path) -> Path:
    """Write the module's weights with its dimension and embedding model as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={
        "format": CHECKPOINT_FORMAT, "dim": str(module.dim),
        "embedder": module.embedder or "", "features": "lexical" if module.lexical else ""})
    return path


def checkpoint_info(path: str | Path) -> dict[str, str]:
    """The metadata a reranker checkpoint records (format, dim, embedder)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise MemFactoryError(f"reranker checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:
        raise MemFactoryError(f"reranker checkpoint {path} is not a safetensors file: "
                              f"{exc}") from None
    if meta.get("format") != CHECKPOINT_FORMAT or not meta.get("dim", "").isdigit():
        raise MemFactoryError(f"{path} is not a reranker checkpoint (no {CHECKPOINT_FORMAT} "
                              "metadata with its embedding dimension)")
    return meta


def load_reranker(path: str | Path, dim: int | None = None,
                  embedder: str | None = None) -> RerankerModule:
    """A reranker from its checkpoint (a file or a folder holding ``reranker.safetensors``).

    Refuses a checkpoint trained on embeddings of another dimension than ``dim`` (and, when
    both are known, of another embedding model than ``embedder``)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    meta = checkpoint_info(path)
    saved_dim = int(meta["dim"])
    saved_model = meta.get("embedder") or None
    if dim is not None and saved_dim != dim:
        raise MemFactoryError(
            f"reranker checkpoint {path} was trained on {saved_dim}-dimensional embeddings "
            f"({saved_model or 'unknown model'}), but this pipeline embeds with "
            f"{embedder or 'its embedder'} ({dim} dimensions): train a reranker for it")
    if embedder and saved_model and saved_model != embedder:
        raise MemFactoryError(
            f"reranker checkpoint {path} was trained on {saved_model} embeddings, but this "
            f"pipeline embeds with {embedder}")
    module = RerankerModule(saved_dim, saved_model, lexical=meta.get("features") == "lexical")
    tensors = load_file(str(path))
    try:
        module.load_state_dict(tensors)
    except RuntimeError as exc:
        raise MemFactoryError(f"reranker checkpoint {path} does not hold a "
                              f"{saved_dim}-dimensional reranker: {exc}") from None
    return module
