"""Training callbacks: how a run reports metrics, samples and checkpoints, and how a caller
asks it to stop. They know nothing of databases; the run store plugs in its own."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memfactory_core.errors import MemFactoryError


@dataclass
class TrainState:
    """Where a run stands; passed to every callback."""

    step: int
    max_steps: int
    output_dir: Path
    #: whether this step's metrics and samples are to be logged (``logging_steps``)
    logged: bool = False
    start_step: int = 0


class TrainingCallback:
    """Base callback: override what you need. ``should_stop`` is polled after each step."""

    def on_train_begin(self, state: TrainState, config: dict[str, Any]) -> None:
        """Before the first step (also when resuming)."""

    def on_step(self, state: TrainState, metrics: dict[str, float],
                samples: list[dict[str, Any]]) -> None:
        """After every optimizer step; ``samples`` is non-empty on logged steps."""

    def on_save(self, state: TrainState, path: Path) -> None:
        """After a checkpoint was written to ``path``."""

    def on_train_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        """After the last step and the final save."""

    def should_stop(self) -> bool:
        return False


class StopCallback(TrainingCallback):
    """Lets a caller (a signal handler, a cancel button) stop the run at the next step with
    a checkpoint. ``stop_after`` stops once that step is done."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.requested = False
        self.stop_after = stop_after

    def request(self) -> None:
        self.requested = True

    def on_step(self, state: TrainState, metrics: dict[str, float],
                samples: list[dict[str, Any]]) -> None:
        if self.stop_after is not None and state.step >= self.stop_after:
            self.requested = True

    def should_stop(self) -> bool:
        return self.requested


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class JsonlCallback(TrainingCallback):
    """Appends logged steps to ``OUTPUT_DIR/metrics.jsonl`` and their sampled trajectories to
    ``OUTPUT_DIR/samples/step_NNNNNN.jsonl``."""

    def on_train_begin(self, state: TrainState, config: dict[str, Any]) -> None:
        self.path = state.output_dir / "metrics.jsonl"
        self.samples_dir = state.output_dir / "samples"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and state.start_step:
            # drop steps logged after the checkpoint we resume from
            kept = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= state.start_step]
            self.path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        elif self.path.exists():
            self.path.unlink()

    def on_step(self, state: TrainState, metrics: dict[str, float],
                samples: list[dict[str, Any]]) -> None:
        if not state.logged:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({k: _json_safe(v) for k, v in metrics.items()}) + "\n")
        if samples:
            out = self.samples_dir / f"step_{state.step:06d}.jsonl"
            out.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples),
                           encoding="utf-8")


class ConsoleCallback(TrainingCallback):
    """A tqdm progress bar with the latest reward, loss and step time."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_train_begin(self, state: TrainState, config: dict[str, Any]) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.start_step, desc="train",
                            unit="step", dynamic_ncols=True)

    def on_step(self, state: TrainState, metrics: dict[str, float],
                samples: list[dict[str, Any]]) -> None:
        if self.bar is None:
            return
        self.bar.update(state.step - self.bar.n)
        self.bar.set_postfix(reward=f"{metrics['reward']:.3f}", loss=f"{metrics['loss']:.4f}",
                             s_step=f"{metrics['step_time']:.2f}", refresh=False)

    def on_save(self, state: TrainState, path: Path) -> None:
        if self.bar is not None:
            self.bar.write(f"saved {path}")

    def on_train_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.close()


class ReportToCallback(TrainingCallback):
    """Sends logged metrics to the trackers named in ``report_to`` (TRL's names:
    ``tensorboard``, ``wandb``), through their own clients."""

    SUPPORTED = ("tensorboard", "wandb")

    def __init__(self, report_to: list[str]) -> None:
        unknown = [r for r in report_to if r not in self.SUPPORTED]
        if unknown:
            raise MemFactoryError(f"report_to: unsupported tracker(s) {unknown}; "
                                  f"use {', '.join(self.SUPPORTED)}")
        self.report_to = report_to
        self.writers: dict[str, Any] = {}

    def on_train_begin(self, state: TrainState, config: dict[str, Any]) -> None:
        for name in self.report_to:
            try:
                if name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter

                    self.writers[name] = SummaryWriter(str(state.output_dir / "runs"))
                else:
                    import wandb

                    wandb.init(config=config, dir=str(state.output_dir), resume="allow")
                    self.writers[name] = wandb
            except ImportError as exc:
                raise MemFactoryError(f"report_to: {name} is not installed ({exc})") from exc

    def on_step(self, state: TrainState, metrics: dict[str, float],
                samples: list[dict[str, Any]]) -> None:
        if not state.logged:
            return
        values = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "step"}
        for name, writer in self.writers.items():
            if name == "tensorboard":
                for k, v in values.items():
                    writer.add_scalar(f"train/{k}", v, state.step)
            else:
                writer.log({f"train/{k}": v for k, v in values.items()}, step=state.step)

    def on_train_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        for name, writer in self.writers.items():
            if name == "tensorboard":
                writer.close()
            else:
                writer.finish()
