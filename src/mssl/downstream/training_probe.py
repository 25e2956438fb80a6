"""Frozen probes of the encoder while it pre-trains (``mssl pretrain --probe DATASET --probe-every N``).

The voxel probe and patch kNN of :mod:`mssl.downstream.probe`, run in the training process on the live
student backbone at step 0 (the random-encoder baseline), every ``every`` steps and at the last step.
Each point goes to TensorBoard (``probe/*``) and to ``RUN/logs/probes.csv``, which is rewritten from the
callback's history; the history is the callback's checkpoint state, so a resumed run continues the curve.
Probing never changes training: global RNG states and module modes are restored afterwards.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from mssl.config import ConfigError, PretrainConfig, backbone_stride
from mssl.data.preprocess import PresetConfig
from mssl.downstream.config import ProbeConfig
from mssl.downstream.datasets import data_channels, load_dataset
from mssl.downstream.probe import EncoderProbe, ProbeData, load_probe_data, probe_encoder
from mssl.models.features import Backbone
from mssl.runs import PretrainRun
from mssl.train.seeding import rng_state, set_rng_state

# history field → logged name (per-class Dice is probe/dice/<class>)
SCALARS = {
    "mean_dice": "probe/mean_dice",
    "knn_accuracy": "probe/knn",
    "knn_balanced_accuracy": "probe/knn_balanced",
    "linear_accuracy": "probe/linear",
    "linear_balanced_accuracy": "probe/linear_balanced",
    "seconds": "probe/seconds",
}


def probe_row(record: dict[str, Any]) -> dict[str, float]:
    """One history record as logged scalars: ``probe/mean_dice``, ``probe/dice/<class>``, ``probe/knn``, ..."""
    row = {name: record[field] for field, name in SCALARS.items()}
    row.update({f"probe/dice/{name}": value for name, value in record["dice"].items()})
    return row


class TrainingProbe(pl.Callback):
    """Runs :func:`~mssl.downstream.probe.probe_encoder` on ``pl_module.method.backbone`` at the due steps (rank 0)."""

    def __init__(self, config: ProbeConfig, preset: PresetConfig, every: int, csv_path: Path) -> None:
        self.config = config
        self.preset = preset
        self.every = every
        self.csv_path = csv_path
        self.dataset = load_dataset(config.data, config.test_fraction, config.validation_fraction)
        self.history: list[dict[str, Any]] = []  # one record per probed step, in step order
        self._data: ProbeData | None = None  # preprocessed once, at the first probe
        self._train_start = 0.0
        self._probe_seconds = 0.0  # spent probing in this process

    @classmethod
    def from_config(cls, cfg: PretrainConfig, preset: PresetConfig, run_dir: Path) -> "TrainingProbe":
        """The run's probe section, with the training seed and backbone, preprocessing like the cache (``preset``)."""
        options = cfg.probe.model_dump(exclude={"every"})
        config = ProbeConfig(**options, backbone=cfg.backbone, seed=cfg.seed, random_baseline=False)
        try:
            return cls(config, preset, cfg.probe.every, PretrainRun(run_dir).probes)
        except (FileNotFoundError, ValueError) as error:  # a bad datalist stops the run before its first step
            raise ConfigError(f"config key 'probe.data': {error}") from None

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])

    # ------------------------------------------------------------------------------------- hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._train_start = time.perf_counter()
        self._probe_if_due(trainer, pl_module)  # step 0: the random-encoder baseline

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # global_step changes only at an optimiser step, so with accumulation the first batch end that
        # sees a new step is the one right after that step
        self._probe_if_due(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        elapsed = time.perf_counter() - self._train_start
        if trainer.is_global_zero and elapsed > 0:
            rank_zero_info(
                f"probes: {self._probe_seconds:.1f} s of {elapsed:.1f} s training "
                f"({100 * self._probe_seconds / elapsed:.1f} %); curve in {self.csv_path}"
            )

    # ---------------------------------------------------------------------------------- probing
    def due(self, step: int, max_steps: int) -> bool:
        """Step 0, every ``every`` steps and the last step, each once (a resumed run skips probed steps)."""
        if any(record["step"] == step for record in self.history):
            return False
        return step % self.every == 0 or step == max_steps

    def _probe_if_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or not self.due(step, trainer.max_steps):
            return
        start = time.perf_counter()
        record = {"step": step, **asdict(self.probe_backbone(pl_module.method.backbone))}
        del record["encoder"]
        record["seconds"] = time.perf_counter() - start  # data loading of the first probe included
        self._probe_seconds += record["seconds"]
        self.history.append(record)
        for logger in trainer.loggers:  # the CSV is probes.csv, written from the history below
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics(probe_row(record), step=step)
        self._write_csv()

    def probe_backbone(self, backbone: Backbone) -> EncoderProbe:
        """Probe ``backbone`` in place, leaving training exactly as it was: RNG states and train/eval modes."""
        if self._data is None:
            self._data = load_probe_data(self.config, self.dataset, self.preset, backbone_stride(self.config.backbone))
            channels = data_channels(self._data.train_items + self._data.test_items, self.dataset.path)
            if channels != self.config.backbone.in_channels:
                raise ConfigError(f"config key 'probe.data': {self.dataset.path} has {channels} channels but the encoder takes {self.config.backbone.in_channels}")
        modes = {module: module.training for module in backbone.modules()}
        saved = rng_state()
        try:
            with torch.enable_grad():  # the linear probe fits its own weights; the backbone runs under no_grad
                return probe_encoder("training", backbone, self._data, self.config)
        finally:
            set_rng_state(saved)
            for module, training in modes.items():
                module.training = training

    def _write_csv(self) -> None:
        rows = [{"step": record["step"], **probe_row(record)} for record in self.history]
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with self.csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
