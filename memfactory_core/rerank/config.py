"""Settings of reranker training (the ``reranker`` section of a training config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RerankerTrainingConfig(BaseModel):
    """Train the pipeline's ``reranker`` slot (a torch module) instead of an LLM policy.

    Rewards are per selected memory: ``citation`` +1 when the generator cites it, -1 when not
    (RMM); ``evidence`` +1 when its source turns hold one of the question's evidence turns,
    -1 when not; ``mix`` a weighted sum of both. ``reinforce`` weights each pick's
    log-probability by its reward minus ``baseline`` (RMM: 0.5); ``grpo`` samples
    ``group_size`` subsets per question and weights each subset's log-probability by its mean
    reward, normalised within the group; ``listwise`` needs no sampling: it maximises the
    softmax probability (at the temperature) of the candidates whose source turns hold the
    question's evidence, among all K (a supervised objective from evidence labels).

    With ``validation_conversations`` the reranker's deterministic Recall@M on those
    conversations is measured before training and every ``eval_steps``; the best reranker so
    far is kept in ``OUTPUT_DIR/best/`` and training stops after ``early_stopping_patience``
    measurements without a gain."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["reinforce", "grpo", "listwise"] = "reinforce"
    reward: Literal["citation", "evidence", "mix"] = "evidence"
    citation_weight: float = Field(0.5, ge=0.0, description="Weight of citations in mix.")
    evidence_weight: float = Field(0.5, ge=0.0, description="Weight of evidence in mix.")
    baseline: float = Field(0.5, description="REINFORCE baseline (RMM: 0.5).")
    group_size: int = Field(4, ge=2, description="Sampled top-M subsets per question (GRPO).")
    temperature: float | None = Field(
        None, gt=0.0, description="Sampling temperature (None: the reranker slot's).")
    init_checkpoint: str | None = Field(
        None, description="Start from this reranker checkpoint (None: untrained, which ranks "
        "as dense retrieval does).")
    validation_conversations: list[str] | None = Field(
        None, description="Conversations of data.path held out to pick the best reranker "
        "by Recall@M (never trained on).")
    eval_steps: int = Field(100, ge=1, description="Steps between validation measurements.")
    lexical: bool = Field(
        False, description="Also weigh the share of the question's content words found in "
        "each memory (one learned weight, starting at zero).")
    lexical_learning_rate: float = Field(
        0.01, gt=0.0, description="Learning rate of the word-overlap weight (a single "
        "number, so it may move faster than the embedding adaptation).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validation measurements without a "
        "better Recall@M (None: run to max_steps).")

    @model_validator(mode="after")
    def _weights(self) -> RerankerTrainingConfig:
        if self.reward == "mix" and self.citation_weight + self.evidence_weight <= 0:
            raise ValueError("reward mix needs a positive citation_weight or evidence_weight")
        if self.algorithm == "listwise" and self.reward != "evidence":
            raise ValueError("algorithm listwise learns from evidence labels: it needs "
                             "reward: evidence")
        if self.early_stopping_patience is not None and not self.validation_conversations:
            raise ValueError("early_stopping_patience needs validation_conversations")
        return self

    @property
    def needs_generator(self) -> bool:
        return self.reward in ("citation", "mix")
