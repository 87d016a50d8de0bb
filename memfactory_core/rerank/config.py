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
    reward, normalised within the group."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["reinforce", "grpo"] = "reinforce"
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

    @model_validator(mode="after")
    def _weights(self) -> RerankerTrainingConfig:
        if self.reward == "mix" and self.citation_weight + self.evidence_weight <= 0:
            raise ValueError("reward mix needs a positive citation_weight or evidence_weight")
        return self

    @property
    def needs_generator(self) -> bool:
        return self.reward in ("citation", "mix")
