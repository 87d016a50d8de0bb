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
    return encode_within(tokenizer, text, None)[0]


def encode_within(tokenizer: TextTokenizer, text: str, budget: int | None,
                  from_end: bool = False) -> tuple[array, int]:
    """Token ids of ``text`` window by window, stopping once more than ``budget`` tokens are
    read (from the start, or from the end when ``from_end``); ``(ids, unread characters)``.

    A 60 MB document with a budget of two chunks is thus read only as far as the budget."""
    parts: list[array] = []
    n = 0
    start, end = 0, len(text)
    while start < end and (budget is None or n <= budget):
        if not from_end:
            stop = min(start + ENCODE_WINDOW_CHARS, end)
            if stop < end:
                cut = max(text.rfind("\n", start, stop), text.rfind(" ", start, stop))
                stop = cut + 1 if cut > start else stop
            piece, start = text[start:stop], stop
        else:
            begin = max(end - ENCODE_WINDOW_CHARS, start)
            if begin > start:
                cut = max(text.find("\n", begin, end), text.find(" ", begin, end))
                begin = cut + 1 if 0 <= cut < end - 1 else begin
            piece, end = text[begin:end], begin
        ids = array("i", tokenizer.encode(piece))
        n += len(ids)
        parts.append(ids)
    if from_end:
        parts.reverse()
    out = array("i")
    for part in parts:
        out.extend(part)
    return out, end - start


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
        budget = None if p.max_chunks is None else p.chunk_tokens * p.max_chunks
        ids, unread = encode_within(tok, state.values[Port.DOCUMENT], budget,
                                    from_end=p.overflow == "keep_tail")
        n = len(ids)
        dropped = 0
        if budget is not None and n > budget:
            if p.overflow == "error":
                size = f"{n} tokens" if not unread else f"more than {n} tokens"
                raise MemFactoryError(
                    f"rollout {state.id}: document has {size}, more than "
                    f"chunk_tokens * max_chunks = {budget} (set overflow to keep_head or keep_tail)"
                )
            dropped = n - budget
            ids = ids[:budget] if p.overflow == "keep_head" else ids[n - budget :]
        size = p.chunk_tokens
        chunks = [tok.decode(ids[i : i + size].tolist()) for i in range(0, len(ids), size)]
        extra: dict[str, Any] = {"document_tokens": n, "chunks": len(chunks),
                                 "dropped_tokens": dropped}
        if unread:
            # reading stopped at the budget: the counts cover what was read
            extra["unread_chars"] = unread
        result = StepResult(
            output=f"{len(chunks)} chunk(s) of up to {p.chunk_tokens} tokens", extra=extra
        )
        return chunks, result
