"""Small callbacks Lightning does not ship: crops per second, compile time, the run's cost and plain progress
lines, a step-labelled progress bar, the final last.ckpt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_info

from mssl.train.cost import CostReporter, ParameterCount, RunPlan


class CropThroughput(pl.Callback):
    """Logs ``train/crops_per_s``: crops consumed by all ranks per wall-clock second, data loading included.

    Measured between consecutive optimiser steps, so the first step (warm-up, worker start) is not counted.
    """

    def __init__(self, crops_per_micro_batch: int) -> None:
        self.crops_per_micro_batch = crops_per_micro_batch
        self._last_time: float | None = None
        self._crops = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_time, self._crops = None, 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._crops += self.crops_per_micro_batch * trainer.world_size
        if pl_module.micro_batch:  # still accumulating: the step is not over
            return
        now = time.perf_counter()
        if self._last_time is not None:
            pl_module.log("train/crops_per_s", self._crops / (now - self._last_time), batch_size=1)
        self._last_time, self._crops = now, 0


class CompileTime(pl.Callback):
    """Reports ``torch.compile``'s cost: the first optimiser step (which compiles) minus the second (which does not).

    Logged as ``train/compile_s`` and printed once; ``compile_s`` stays None until two steps have run.
    The value goes to the loggers directly: ``LightningModule.log`` would repeat it on every later row of
    metrics.csv.
    """

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.compile_s: float | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if not pl_module.micro_batch:  # the first micro-batch of an optimiser step
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.micro_batch or len(self.step_times) >= 2:
            return
        self.step_times.append(time.perf_counter() - self._start)
        if len(self.step_times) == 2:
            first, second = self.step_times
            self.compile_s = max(first - second, 0.0)
            log_once(trainer, {"train/compile_s": self.compile_s}, step=trainer.global_step - 1)  # the second step's row
            rank_zero_info(f"torch.compile: first step {first:.1f} s, second {second:.1f} s: about {self.compile_s:.1f} s compiling")


def log_once(trainer: pl.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Write ``metrics`` to every logger (rank 0) as one row at ``step``, not carried to later steps."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


class CostReport(pl.Callback):
    """:class:`~mssl.train.cost.CostReporter` on rank 0: the plan when training starts, the measured cost
    after the first steps, and (``lines``) one plain progress line every N steps or S seconds.

    ``crops``: crop shape → crops one optimiser step reads per device; ``planned_steps`` and ``devices``
    are the run's (a dry run trains fewer steps on one device but reports for the planned run).
    """

    def __init__(
        self, crops: Mapping[tuple[int, ...], int], planned_steps: int, devices: int, lines: bool, every_steps: int, every_seconds: float
    ) -> None:
        self.crops, self.planned_steps, self.devices = dict(crops), planned_steps, devices
        self.lines, self.every_steps, self.every_seconds = lines, every_steps, every_seconds
        self.reporter: CostReporter | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        plan = RunPlan(ParameterCount.of(pl_module), self.crops, self.planned_steps, self.devices)
        self.reporter = CostReporter(plan, pl_module.device, self.lines, self.every_steps, self.every_seconds)
        self.reporter.start(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.reporter is None or pl_module.micro_batch:  # not rank 0, or the step is not over
            return

        def values() -> dict[str, float]:
            return {**{name: float(value) for name, value in pl_module.last_losses.items()}, "lr": trainer.optimizers[0].param_groups[0]["lr"]}

        self.reporter.step_done(trainer.global_step, values)


class StepProgressBar(RichProgressBar):
    """Rich progress bar over the whole run: one endless epoch of ``max_steps × accumulate`` micro-batches.

    Lightning's default titles it "Epoch 0/-2" and sizes it in optimiser steps while counting
    micro-batches, which overflows with accumulation and after a resume.
    """

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "pre-training"


class FinalLastCheckpoint(pl.Callback):
    """Writes ``last.ckpt`` at the final step when that step is not a periodic one.

    ``ModelCheckpoint(save_last=True)`` refreshes last.ckpt only together with a periodic save, so a
    run of 1500 steps with checkpoints every 1000 would otherwise end with last.ckpt at step 1000.
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step % self.every_n_steps:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full training state
