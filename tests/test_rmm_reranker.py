"""RMM's reranker module: residual adaptation, Gumbel top-M with Plackett-Luce probabilities,
safetensors checkpoints that refuse another dimension, REINFORCE and GRPO that learn; the
citing generator's citations, out-of-range ones recorded."""

from __future__ import annotations

import math

import pytest
import torch

from memfactory_core.components.citing_generator import parse_citations, strip_citations
from memfactory_core.errors import MemFactoryError
from memfactory_core.rerank.module import (
    RerankerModule,
    checkpoint_info,
    load_reranker,
    save_reranker,
    select_top_m,
)
from memfactory_core.training.reranker_trainer import grpo_subset_loss, reinforce_loss


def test_untrained_module_scores_as_dot_products_and_adapts_residually() -> None:
    torch.manual_seed(0)
    mod = RerankerModule(8)
    q, m = torch.randn(2, 8), torch.randn(2, 5, 8)
    assert torch.allclose(mod.scores(q, m), torch.einsum("bd,bkd->bk", q, m))
    with torch.no_grad():
        mod.w_q.weight.copy_(torch.eye(8))  # q' = 2q
    assert torch.allclose(mod.scores(q, m), 2 * torch.einsum("bd,bkd->bk", q, m), atol=1e-5)
    with pytest.raises(MemFactoryError, match="8-dimensional"):
        mod.scores(torch.randn(1, 4), torch.randn(1, 3, 4))


def test_select_top_m_without_noise_is_top_m_with_plackett_luce_log_probs() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    sel = select_top_m(scores, 2, temperature=0.5, sample=False)
    assert sel.indices.tolist() == [[1, 2]]
    logits = scores[0] / 0.5
    first = logits[1] - torch.logsumexp(logits, 0)
    second = logits[2] - torch.logsumexp(logits[[0, 2, 3]], 0)
    assert torch.allclose(sel.log_probs[0], torch.stack([first, second]))


def test_padding_is_never_selected_and_short_lists_are_marked() -> None:
    scores = torch.tensor([[5.0, 1.0, 9.0], [2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        sel = select_top_m(scores, 3, 1.0, mask, sample=True, generator=gen)
        assert 2 not in sel.indices[0].tolist()
        assert sel.indices[0, 2].item() == -1 and sel.log_probs[0, 2].item() == 0.0
        assert sorted(sel.indices[1].tolist()) == [0, 1, 2]


def test_gumbel_sampling_follows_the_softmax_at_the_temperature() -> None:
    scores = torch.tensor([[0.0, 0.5, 1.0]]).repeat(4000, 1)
    gen = torch.Generator().manual_seed(1)
    sel = select_top_m(scores, 1, temperature=0.5, sample=True, generator=gen)
    freq = torch.bincount(sel.indices[:, 0], minlength=3).float() / 4000
    expected = torch.softmax(scores[0] / 0.5, 0)
    assert torch.allclose(freq, expected, atol=0.03)
    # the recorded log-probability is that of the pick under the same softmax
    assert torch.allclose(sel.log_probs[:, 0].exp(), expected[sel.indices[:, 0]], atol=1e-6)


def test_checkpoint_round_trip_and_refusals(tmp_path) -> None:
    mod = RerankerModule(16, "hashing-16")
    with torch.no_grad():
        mod.w_m.weight.normal_()
    path = save_reranker(mod, tmp_path / "r.safetensors")
    assert checkpoint_info(path)["dim"] == "16"
    back = load_reranker(path, dim=16, embedder="hashing-16")
    assert torch.equal(back.w_m.weight, mod.w_m.weight)
    with pytest.raises(MemFactoryError, match=r"16-dimensional embeddings.*\(384 dimensions\)"):
        load_reranker(path, dim=384, embedder="all-MiniLM-L6-v2")
    with pytest.raises(MemFactoryError, match="trained on hashing-16 embeddings"):
        load_reranker(path, dim=16, embedder="hashing-other")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(MemFactoryError, match="not a reranker checkpoint"):
        load_reranker(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_text("not tensors")
    with pytest.raises(MemFactoryError, match="not a safetensors file"):
        load_reranker(tmp_path / "junk.safetensors")
    with pytest.raises(MemFactoryError, match="not found"):
        load_reranker(tmp_path / "missing")


def synthetic_task(seed: int, n: int = 64, k: int = 10, dim: int = 16
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries and candidates where the useful candidate is marked by a hidden direction the
    plain dot product does not see."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    m = torch.nn.functional.normalize(torch.randn(n, k, dim, generator=g), dim=-1)
    useful = torch.randint(0, k, (n,), generator=g)
    direction = torch.zeros(dim)
    direction[0] = 1.0
    m[torch.arange(n), useful] += 2.0 * direction
    q[:, 0] = 0.0
    return q, m, useful


def top1_accuracy(mod: RerankerModule, q: torch.Tensor, m: torch.Tensor,
                  useful: torch.Tensor) -> float:
    with torch.no_grad():
        return (mod.scores(q, m).argmax(dim=1) == useful).float().mean().item()


@pytest.mark.parametrize("algorithm", ["reinforce", "grpo"])
def test_policy_gradient_learns_to_select_useful_memories(algorithm: str) -> None:
    torch.manual_seed(0)
    q, m, useful = synthetic_task(0)
    mod = RerankerModule(16)
    opt = torch.optim.Adam(mod.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    before = top1_accuracy(mod, q, m, useful)
    for _ in range(60):
        scores = mod.scores(q, m)
        groups = 1 if algorithm == "reinforce" else 4
        sels = [select_top_m(scores, 2, 0.5, sample=True, generator=gen) for _ in range(groups)]
        rewards = [[[1.0 if j == useful[i].item() else -1.0 for j in s.indices[i].tolist()]
                    for i in range(q.shape[0])] for s in sels]
        loss = (reinforce_loss(sels[0], rewards[0], 0.5) if algorithm == "reinforce"
                else grpo_subset_loss(sels, rewards))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = top1_accuracy(mod, q, m, useful)
    assert after > before + 0.3, (before, after)


def test_reinforce_loss_uses_reward_minus_baseline_per_pick() -> None:
    log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    from memfactory_core.rerank.module import Selection

    sel = Selection(indices=torch.tensor([[0, 1]]), log_probs=log_probs)
    loss = reinforce_loss(sel, [[1.0, -1.0]], baseline=0.5)
    # -((1-0.5)*-1 + (-1-0.5)*-2) / 2
    assert math.isclose(loss.item(), -((0.5 * -1.0) + (-1.5 * -2.0)) / 2)


def test_citations_are_parsed_and_out_of_range_ones_recorded() -> None:
    c = parse_citations("Bergen [0][2] and [ 1, 9 ] [0] [12]", shown=3)
    assert c.cited == [0, 2, 1] and c.out_of_range == [9, 12]
    assert parse_citations("no citation at all", 3).cited == []
    assert parse_citations("[5]", 0).out_of_range == [5]
    assert strip_citations("Answer: Bergen [0][1].\nmore") == "Bergen"


def test_word_overlap_is_the_share_of_the_questions_content_words() -> None:
    from memfactory_core.rerank.features import overlap_tensor, word_overlap

    shares = word_overlap("When did Ann adopt the dogs?",
                          ["Ann adopted a dog in May", "Bo likes cats", "ANN adopts the dog"])
    # question words ann, adopt, dog: "dogs" matches "dog", "adopts" "adopt", not "adopted"
    assert shares == [pytest.approx(2 / 3), 0.0, 1.0]
    assert word_overlap("Who is it?", ["anything"]) == [0.0]
    t = overlap_tensor(["Ann dog", "x"], [[{"text": "Ann"}], []], 3)
    assert t.tolist() == [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]


def test_lexical_reranker_adds_its_weight_times_the_overlap_and_keeps_it(tmp_path) -> None:
    torch.manual_seed(0)
    mod = RerankerModule(8, "hashing-8", lexical=True)
    q, m = torch.randn(2, 8), torch.randn(2, 3, 8)
    overlap = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    dense = torch.einsum("bd,bkd->bk", q, m)
    assert torch.allclose(mod.scores(q, m, overlap), dense)  # starts as the retriever
    with torch.no_grad():
        mod.lexical_weight.fill_(2.0)  # type: ignore[union-attr]
    assert torch.allclose(mod.scores(q, m, overlap), dense + 2.0 * overlap)
    with pytest.raises(MemFactoryError, match="overlap tensor"):
        mod.scores(q, m)
    path = save_reranker(mod, tmp_path / "lex.safetensors")
    assert checkpoint_info(path)["features"] == "lexical"
    back = load_reranker(path, dim=8)
    assert back.lexical and float(back.lexical_weight.detach()) == 2.0  # type: ignore[arg-type]
    plain = load_reranker(save_reranker(RerankerModule(8), tmp_path / "p.safetensors"))
    assert not plain.lexical and plain.lexical_weight is None
