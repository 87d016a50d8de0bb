"""Training config: the pipeline and model (as in evaluation), GRPO settings under TRL's
``GRPOConfig`` names, LoRA, the reward components and the roles that are trained."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memfactory_core.eval.config import DataConfig, GenerationConfig, PipelineRunConfig
from memfactory_core.rerank.config import RerankerTrainingConfig
from memfactory_core.training.memory_r1_config import MemoryR1Options

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]


class LoraConfig(BaseModel):
    """PEFT LoRA adapter on the trained policy."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                 "gate_proj", "up_proj", "down_proj"],
        description="Module names to adapt, or 'all-linear'.",
    )


class RewardSpec(BaseModel):
    """One named reward component and its weight; other keys are the component's parameters."""

    model_config = ConfigDict(extra="allow")

    name: str
    weight: float = 1.0

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SyntheticDataConfig(BaseModel):
    """The key-value retrieval task built by :mod:`memfactory_core.training.synthetic`."""

    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(256, ge=1)
    facts: int = Field(4, ge=1, description="Key-value facts per document.")
    filler_sentences: int = Field(4, ge=0, description="Distractor sentences between facts.")
    keys: list[str] | None = Field(None, description="Key vocabulary (default: built-in).")
    values: list[str] | None = Field(None, description="Value vocabulary (default: built-in).")
    seed: int = 0


class TrainDataConfig(DataConfig):
    """Training questions: a data file (as in evaluation) or the synthetic task."""

    path: str | None = Field(None, description="Data file; leave empty with synthetic.")  # type: ignore[assignment]
    synthetic: SyntheticDataConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TrainDataConfig:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data.path and data.synthetic")
        return self


class TrainConfig(PipelineRunConfig):
    """``memfactory train`` configuration (GRPO fields keep TRL GRPOConfig's names).

    ``model`` is the policy's base model (transformers backend); ``roles`` holds frozen models
    for roles other than the trained ones.
    """

    trained_roles: list[str] = Field(
        default_factory=lambda: ["policy"],
        description="Roles whose turns are trained; they share the policy and its adapter.",
    )
    data: TrainDataConfig
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(temperature=1.0, seed=None)
    )
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(name="boxed_em", weight=1.0)]
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    output_dir: str

    # GRPO (TRL GRPOConfig names)
    learning_rate: float = Field(1e-5, gt=0.0)
    num_generations: int = Field(8, ge=2, description="Trajectories per question (group size).")
    questions_per_step: int = Field(4, ge=1, description="Questions (groups) per optimizer step.")
    per_device_train_batch_size: int = Field(
        16, ge=1, description="Trained turns per forward/backward micro-batch."
    )
    gradient_accumulation_steps: int | None = Field(
        None, ge=1, description="Micro-batches per step (None: as many as the turns need)."
    )
    max_tokens_per_micro_batch: int | None = Field(
        8192, ge=1,
        description="Token budget of a micro-batch, rows x padded length (a longer turn goes "
        "alone); None: no budget. The step's loss does not depend on how turns are split.",
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute each layer's activations in the backward pass instead "
        "of keeping them (TRL's default; far less memory, about a third more compute).",
    )
    num_iterations: int = Field(1, ge=1, description="Optimizer passes over each step's turns.")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient to the adapter-free base.")
    epsilon: float = Field(0.2, gt=0.0)
    epsilon_high: float | None = Field(None, gt=0.0, description="Upper clip (None: epsilon).")
    loss_type: LossType = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    max_completion_length: int | None = Field(
        None, ge=1, description="dr_grpo's constant normaliser (None: longest turn limit)."
    )
    temperature: float | None = Field(
        None, gt=0.0, description="Logit temperature in the loss (None: generation.temperature)."
    )
    max_steps: int = Field(100, ge=1)
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(50, ge=1)
    save_total_limit: int | None = Field(
        None, ge=1, description="Keep only the newest N checkpoints (None: keep all)."
    )
    save_samples: int = Field(4, ge=0, description="Trajectories saved per logged step.")
    max_grad_norm: float = Field(1.0, gt=0.0)
    lr_scheduler_type: Literal[
        "constant", "constant_with_warmup", "linear", "cosine"
    ] = "constant_with_warmup"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    report_to: list[str] = Field(default_factory=list, description="e.g. [tensorboard, wandb].")
    resume: bool = False
    device: str | None = Field(None, description="cpu, cuda, ... (None: cuda when available).")
    rollout_backend: Literal["transformers", "vllm"] = "transformers"
    vllm_options: dict[str, Any] = Field(default_factory=dict)
    memory_r1: MemoryR1Options | None = Field(
        None, description="Train Memory-R1's memory manager or answer agent on one-step "
        "samples (see memfactory_core.training.memory_r1).",
    )
    reranker: RerankerTrainingConfig | None = Field(
        None, description="Train the pipeline's reranker (a torch module, RMM) instead of an "
        "LLM policy: REINFORCE or GRPO over sampled top-M subsets.",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, v: Any) -> Any:
        if v is None or v == "none":
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("trained_roles")
    @classmethod
    def _some_roles(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one role to train")
        return v

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, v: list[RewardSpec]) -> list[RewardSpec]:
        from memfactory_core.training.rewards import REWARDS

        if not v:
            raise ValueError("give at least one reward component")
        for spec in v:
            if spec.name not in REWARDS:
                raise ValueError(
                    f"unknown reward {spec.name!r}; available: {', '.join(sorted(REWARDS))}"
                )
            REWARDS[spec.name].check(spec.params)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.model.backend != "transformers":
            raise ValueError("model.backend: the trained policy loads with transformers "
                             "(use rollout_backend: vllm for vLLM rollouts)")
        clash = [r for r in self.trained_roles if r in self.roles]
        if clash:
            raise ValueError(f"roles {clash} are trained, so they use the policy, not 'roles'")
        return self

    @property
    def epsilon_low(self) -> float:
        return self.epsilon

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def loss_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return self.generation.temperature if self.generation.temperature > 0 else 1.0
