"""Options of Memory-R1's one-step training (the ``memory_r1`` section of a training config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from memfactory_core.eval.config import DataConfig


class MemoryR1Options(BaseModel):
    """Train the memory manager or the answer agent of a bank pipeline on one-step samples.

    The trained role (``trained_roles``, one of them) says which: a memory-manager role learns
    from (the new facts of a question's evidence turn, the bank built from the earlier turns,
    the question), scored by a frozen answerer on the edited bank; an answer-agent role
    learns from (the bank of the whole conversation read, the question), scored on its own
    answer.
    """

    model_config = ConfigDict(extra="forbid")

    bank: Literal["add_all", "manager"] = Field(
        "add_all",
        description="How the bank of the earlier turns is built: every fact added (add_all), "
        "or the pipeline's memory manager run by the frozen base model (manager).",
    )
    cache_dir: str | None = Field(
        None, description="Folder for built banks (default: $MEMFACTORY_HOME/cache/memory_r1).")
    frozen_temperature: float = Field(
        0.0, ge=0.0,
        description="Sampling temperature of the frozen roles (the answerer that scores the "
        "manager, the base manager that builds banks); 0 is greedy.",
    )
    validation: DataConfig | None = Field(
        None, description="Held-out questions (e.g. split: validation) scored with greedy "
        "decoding every eval_steps steps; logged as eval/* metrics.",
    )
    eval_steps: int = Field(10, ge=1, description="Steps between validation passes.")
