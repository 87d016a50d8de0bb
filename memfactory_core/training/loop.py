"""The step loop both trainers share: resume from the latest checkpoint, report each step to
the callbacks, save every ``save_steps`` and at the end, keep ``save_total_limit`` checkpoints."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from memfactory_core.training.callbacks import TrainingCallback, TrainState
from memfactory_core.training.config import TrainConfig

CHECKPOINT_PREFIX = "checkpoint-"
CONFIG_FILE = "train_config.json"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint folder with the highest step under ``output_dir``, if any."""
    found = []
    for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = p.name[len(CHECKPOINT_PREFIX):]
        if suffix.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(suffix), p))
    return max(found)[1] if found else None


class CheckpointedLoop:
    """Mixin for a trainer with ``config``, ``output_dir``, ``step``, ``callbacks`` and its own
    ``train_step``, ``save_checkpoint`` and ``load_checkpoint``."""

    config: TrainConfig
    output_dir: Path
    step: int
    callbacks: list[TrainingCallback]

    def train_step(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        raise NotImplementedError

    def save_checkpoint(self) -> Path:
        raise NotImplementedError

    def load_checkpoint(self, path: Path) -> None:
        raise NotImplementedError

    def _checkpoint_paths(self) -> tuple[Path, Path]:
        """The checkpoint folder of the current step and the temporary folder to write it in
        (created), so that a crash mid-save never leaves a half-written checkpoint."""
        path = self.output_dir / f"{CHECKPOINT_PREFIX}{self.step}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        return path, tmp

    def _publish_checkpoint(self, tmp: Path, path: Path) -> Path:
        """Move the written ``tmp`` into place, drop the oldest beyond the limit, tell the
        callbacks."""
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        self._prune_checkpoints()
        state = self._state(logged=False)
        for cb in self.callbacks:
            cb.on_save(state, path)
        return path

    def _prune_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if limit is None:
            return
        found = sorted((int(p.name[len(CHECKPOINT_PREFIX):]), p)
                       for p in self.output_dir.glob(f"{CHECKPOINT_PREFIX}*")
                       if p.name[len(CHECKPOINT_PREFIX):].isdigit())
        for _, old in found[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def _state(self, logged: bool, start: int = 0) -> TrainState:
        return TrainState(step=self.step, max_steps=self.config.max_steps,
                          output_dir=self.output_dir, logged=logged, start_step=start)

    def _run_loop(self, saved_config: dict[str, Any], reported_config: dict[str, Any]
                  ) -> dict[str, Any]:
        """Resume, write ``saved_config`` to the run folder, run to ``max_steps`` (or a stop
        request) and return the summary; ``reported_config`` goes to ``on_train_begin``."""
        cfg = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            ckpt = latest_checkpoint(self.output_dir)
            if ckpt is not None:
                self.load_checkpoint(ckpt)
        (self.output_dir / CONFIG_FILE).write_text(json.dumps(saved_config, indent=1),
                                                   encoding="utf-8")
        start = self.step
        for cb in self.callbacks:
            cb.on_train_begin(self._state(False, start), reported_config)
        metrics: dict[str, float] = {}
        last_saved = self.step if start else -1
        stopped = False
        t0 = time.perf_counter()
        while self.step < cfg.max_steps:
            metrics, samples = self.train_step()
            state = self._state(logged=bool(samples) or self.step % cfg.logging_steps == 0,
                                start=start)
            for cb in self.callbacks:
                cb.on_step(state, metrics, samples)
            if self.step % cfg.save_steps == 0:
                self.save_checkpoint()
                last_saved = self.step
            if any(cb.should_stop() for cb in self.callbacks):
                stopped = True
                break
        if last_saved != self.step:
            self.save_checkpoint()
        end_state = self._state(False, start)
        for cb in self.callbacks:
            cb.on_train_end(end_state, metrics)
        return {"steps": self.step, "start_step": start, "stopped": stopped,
                "seconds": time.perf_counter() - t0, "last_metrics": metrics,
                "checkpoint": str(latest_checkpoint(self.output_dir))}
