"""Token chunker: splits a document into fixed-size chunks of policy tokens (MemAgent)."""

from __future__ import annotations

from array import array
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.components.base import (
    Port,
    RolloutState,
    Segmenter,
    StepResult,
    register,
)
from memfactory_core.errors import MemFactoryError
from memfactory_core.llm.base import TextTokenizer

#: Text is tokenized in windows of about this many characters, cut at whitespace: a fast
#: tokenizer's per-token bookkeeping (offsets, token strings) then stays small however long
#: the document, and the ids are kept as 4-byte integers.
ENCODE_WINDOW_CHARS = 32_768


def encode_long(tokenizer: TextTokenizer, text: str) -> array:
    """Token ids of ``text``, encoded window by window, as a compact ``array('i')``."""
    ids = array("i")
    start = 0
    while start < len(text):
        end = min(start + ENCODE_WINDOW_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            end = cut + 1 if cut > start else end
        ids.extend(tokenizer.encode(text[start:end]))
        start = end
    return ids


class TokenChunkerParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_tokens: int = Field(5000, ge=16, description="Tokens per chunk.")
    max_chunks: int | None = Field(
        None, ge=1, description="Most chunks read per document (None: no limit)."
    )
    overflow: Literal["keep_head", "keep_tail", "error"] = Field(
        "keep_head",
        description=(
            "A document longer than chunk_tokens * max_chunks: read its first chunks "
            "(keep_head), its last chunks (keep_tail), or stop with an error. The tokens "
            "left unread are recorded in the trace."
        ),
    )


@register
class TokenChunker(Segmenter):
    name = "token_chunker"
    description = "Split the document into chunks of a fixed number of policy tokens."
    Params = TokenChunkerParams
    inputs = (Port.DOCUMENT,)
    outputs = (Port.CHUNK,)

    def segment(self, state: RolloutState) -> tuple[list[Any], StepResult]:
        p: TokenChunkerParams = self.params  # type: ignore[assignment]
        tok = self.context.tokenizer
        ids = encode_long(tok, state.values[Port.DOCUMENT])
        n = len(ids)
        budget = None if p.max_chunks is None else p.chunk_tokens * p.max_chunks
        dropped = 0
        if budget is not None and n > budget:
            if p.overflow == "error":
                raise MemFactoryError(
                    f"rollout {state.id}: document has {n} tokens, more than "
                    f"chunk_tokens * max_chunks = {budget} (set overflow to keep_head or keep_tail)"
                )
            dropped = n - budget
            ids = ids[:budget] if p.overflow == "keep_head" else ids[n - budget :]
        size = p.chunk_tokens
        chunks = [tok.decode(ids[i : i + size].tolist()) for i in range(0, len(ids), size)]
        result = StepResult(
            output=f"{len(chunks)} chunk(s) of up to {p.chunk_tokens} tokens",
            extra={"document_tokens": n, "chunks": len(chunks), "dropped_tokens": dropped},
        )
        return chunks, result
