"""Evaluation config: which pipeline and model, on which data, how sampled, where written."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memfactory_core.llm.base import SamplingParams


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="HotpotQA JSONL, MemAgent eval JSON/JSONL or parquet, "
                      "LoCoMo or LongMemEval JSON.")
    format: Literal["auto", "hotpotqa", "memagent_json", "memagent_parquet", "locomo",
                    "longmemeval"] = "auto"
    docs: int | list[int] | None = Field(
        None, description="Documents per haystack (HotpotQA); a list gives one summary each."
    )
    limit: int | None = Field(None, ge=1, description="Number of questions to evaluate.")
    exclude: str | None = Field(
        None, description="A data file whose questions are left out, e.g. the training set."
    )
    seed: int = 0
    conversations: list[str] | None = Field(
        None, description="Conversation ids to read (LoCoMo sample_id, e.g. [conv-30])."
    )
    split: Literal["train", "validation", "test"] | None = Field(
        None, description="Memory-R1's LoCoMo split: train conv-26, validation conv-30, test "
        "the other eight."
    )
    sessions: int | None = Field(
        None, ge=1, description="Read only the first N sessions of each conversation (a "
        "question is kept when its evidence lies in them)."
    )
    categories: list[int] | None = Field(
        None, description="LoCoMo categories to keep (default 1-4; 5 is adversarial)."
    )

    def load_options(self) -> dict[str, Any]:
        """The conversation options that were set, as ``load_episodes`` keywords."""
        keys = ("conversations", "split", "sessions", "categories")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def exclude_ids(self) -> set[str]:
        """Question ids of the ``exclude`` file (empty when none is named)."""
        if self.exclude is None:
            return set()
        from memfactory_core.data.loaders import question_ids

        return question_ids(self.exclude)

    @field_validator("docs")
    @classmethod
    def _positive(cls, v: int | list[int] | None) -> int | list[int] | None:
        values = v if isinstance(v, list) else [v] if v is not None else []
        if any(d < 1 for d in values):
            raise ValueError("document counts must be positive")
        return v

    @property
    def doc_counts(self) -> list[int | None]:
        if self.docs is None:
            return [None]
        return list(self.docs) if isinstance(self.docs, list) else [self.docs]


class GenerationConfig(BaseModel):
    """Sampling shared by the LLM components (each sets its own max_new_tokens)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    seed: int | None = 0

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )


class ModelConfig(BaseModel):
    """A model bound to a role: a built-in name, local folder or hub id, and its backend."""

    model_config = ConfigDict(extra="forbid")

    model: str
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        """A bare string is a model name: ``model: tiny-random``."""
        return {"model": v} if isinstance(v, str) else v


class PipelineRunConfig(BaseModel):
    """What a run executes: a pipeline, its parameter overrides and the models of its roles."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str | dict[str, Any] = Field(description="Preset name, pipeline file or inline spec.")
    pipeline_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Parameter overrides by component name (or 'memory'), merged into the spec.",
    )
    model: ModelConfig = Field(description="The main model; every role uses it by default.")
    roles: dict[str, ModelConfig] = Field(
        default_factory=dict, description="Models for roles other than the main model's."
    )


class EvalConfig(PipelineRunConfig):
    """``memfactory eval`` configuration."""

    data: DataConfig
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    samples: int = Field(1, ge=1, description="Samples per question (avg@k).")
    batch_size: int = Field(64, ge=1, description="Rollouts run together through the runtime.")
    output_dir: str
    overwrite: bool = Field(
        False, description="Replace an existing OUTPUT_DIR/results.json (refused otherwise)."
    )
    recall_at: list[int] = Field(
        default_factory=lambda: [5, 10],
        description="k values of Recall@k against evidence turn ids (pipelines with a "
        "retriever).",
    )
    judge: ModelConfig | None = Field(
        None, description="An LLM judge (e.g. backend openai) that marks each answer correct "
        "or wrong against the gold answer; its score is logged as llm_judge.",
    )

    @field_validator("recall_at")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("k values must be positive")
        return v
