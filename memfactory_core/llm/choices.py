"""Constrained choice decoding: each row of a batch may only produce one of its allowed replies.

Sampling still follows the model's own probabilities, renormalised over the tokens that keep
the reply on one of the choices, so a policy trained on these replies learns which choice to
make. transformers offers ``prefix_allowed_tokens_fn``, but that applies one function to every
row with no notion of where the prompt ends in a left-padded batch; this processor knows each
row's own choices and where its generation starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

TokenTrie = dict[int, "TokenTrie"]


def build_trie(choices: Sequence[Sequence[int]], eos_token_id: int) -> TokenTrie:
    """A trie over the choices' token ids, each ending with ``eos_token_id``."""
    root: TokenTrie = {}
    for ids in choices:
        node = root
        for tok in [*ids, eos_token_id]:
            node = node.setdefault(tok, {})
    return root


def longest_choice(choices: Sequence[Sequence[int]]) -> int:
    """Tokens the longest choice needs, its end-of-sequence token included."""
    return max((len(c) for c in choices), default=0) + 1


class ChoiceConstraint(LogitsProcessor):
    """Masks every token that would leave the row's trie; rows without a trie are free."""

    def __init__(self, tries: Sequence[TokenTrie | None], prompt_width: int) -> None:
        self.tries = list(tries)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_width:].tolist()
        for row, trie in enumerate(self.tries):
            if trie is None:
                continue
            node: TokenTrie | None = trie
            for tok in generated[row]:
                node = node.get(tok) if node else None
                if node is None:
                    break
            if not node:  # the row has ended (padding follows its EOS)
                continue
            allowed = torch.tensor(list(node), device=scores.device)
            masked = torch.full_like(scores[row], float("-inf"))
            masked[allowed] = scores[row, allowed]
            scores[row] = masked
        return scores
