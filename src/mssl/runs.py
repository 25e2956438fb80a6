"""The layout of run folders: the one module that names the files in them.

A pre-training run (``mssl pretrain``, :class:`PretrainRun`)::

    RUN/config.yaml                      resolved config (its data.cache an absolute path)
    RUN/checkpoints/last.ckpt            newest full training state
    RUN/checkpoints/step-XXXXXXX.ckpt    periodic checkpoints
    RUN/logs/                            TensorBoard events, metrics.csv (+ probes.csv with --probe)
    RUN/summary.json                     what the finished run reports
    RUN/initial_weights.json             fingerprints of the backbone before the first step
    RUN/export/                          ``mssl export`` (:class:`ExportFolder`)
    RUN/figures/                         ``mssl visualize``

An export folder (:class:`ExportFolder`): ``encoder.safetensors`` (``encoder.pt`` with ``--format
torch``, ``nnunet_pretrained.pth`` + ``nnunet_plans.json`` with ``--format nnunet``), each weight file
with its sidecar (same name, ``.json``).

A fine-tuning run (``mssl finetune``, :class:`FinetuneRun`)::

    RUN/model.json          what to build, how the data were preprocessed
    RUN/best.safetensors    the best weights
    RUN/result.json         best step and validation scores
    RUN/last.ckpt           everything ``--resume`` needs
    RUN/metrics.csv, RUN/curve.png, RUN/tensorboard/
    RUN/evaluation/SPLIT/   ``mssl evaluate`` (:class:`EvaluationFolder`)

``mssl probe`` writes a :class:`ProbeFolder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_SUFFIX = ".ckpt"
LAST_CHECKPOINT_NAME = "last"  # Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST
PERIODIC_CHECKPOINT_FORMAT = "step-{step:07d}"  # a ModelCheckpoint filename template
PERIODIC_CHECKPOINT_PREFIX = PERIODIC_CHECKPOINT_FORMAT.split("{")[0]
LOG_DIR = "logs"
METRICS_FILE = "metrics.csv"  # Lightning's CSVLogger writes this name; fine-tuning keeps the same
SIDECAR_SUFFIX = ".json"
EXPORT_FILES = {"monai": "encoder.safetensors", "torch": "encoder.pt", "nnunet": "nnunet_pretrained.pth"}


def sidecar_of(weights_file: str | Path) -> Path:
    """The sidecar of an exported weight file: ``encoder.safetensors`` → ``encoder.json``."""
    return Path(weights_file).with_suffix(SIDECAR_SUFFIX)


@dataclass(frozen=True)
class _Folder:
    """A folder of known layout; ``path`` may be given as a string."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))


@dataclass(frozen=True)
class ExportFolder(_Folder):
    """The weight files ``mssl export`` writes into a folder (default RUN/export)."""

    def weights(self, format: str) -> Path:
        """The weight file of an export format (``monai``, ``torch``, ``nnunet``)."""
        if format not in EXPORT_FILES:
            raise ValueError(f"unknown export format {format!r}; choose one of {sorted(EXPORT_FILES)}")
        return self.path / EXPORT_FILES[format]

    @property
    def encoder(self) -> Path:
        """``encoder.safetensors``: the default export."""
        return self.weights("monai")

    @property
    def nnunet_plans(self) -> Path:
        return self.path / "nnunet_plans.json"


@dataclass(frozen=True)
class PretrainRun(_Folder):
    """The folder of a pre-training run."""

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        """``checkpoints/last.ckpt``: the newest full training state."""
        return self.checkpoints / f"{LAST_CHECKPOINT_NAME}{CHECKPOINT_SUFFIX}"

    def periodic_checkpoints(self) -> list[Path]:
        """The ``checkpoints/step-XXXXXXX.ckpt`` files, newest first."""
        return sorted(self.checkpoints.glob(f"{PERIODIC_CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}"), reverse=True)

    @property
    def logs(self) -> Path:
        return self.path / LOG_DIR

    @property
    def metrics(self) -> Path:
        return self.logs / METRICS_FILE

    @property
    def probes(self) -> Path:
        """The probe curve of ``mssl pretrain --probe``."""
        return self.logs / "probes.csv"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def initial_fingerprints(self) -> Path:
        return self.path / "initial_weights.json"

    @property
    def export(self) -> ExportFolder:
        return ExportFolder(self.path / "export")

    @property
    def figures(self) -> Path:
        return self.path / "figures"


@dataclass(frozen=True)
class FinetuneRun(_Folder):
    """The folder of a fine-tuning run."""

    @property
    def model(self) -> Path:
        """``model.json``: what to build and how the data were preprocessed."""
        return self.path / "model.json"

    def description(self) -> dict[str, Any]:
        """The content of ``model.json``; FileNotFoundError when the folder is no fine-tuned run."""
        if not self.model.is_file():
            raise FileNotFoundError(f"{self.path}: not a fine-tuned run ({self.model.name} missing)")
        return json.loads(self.model.read_text(encoding="utf-8"))

    @property
    def weights(self) -> Path:
        """``best.safetensors``: the best weights (by validation)."""
        return self.path / "best.safetensors"

    @property
    def result(self) -> Path:
        return self.path / "result.json"

    @property
    def checkpoint(self) -> Path:
        """``last.ckpt``: everything ``--resume`` needs."""
        return self.path / f"{LAST_CHECKPOINT_NAME}{CHECKPOINT_SUFFIX}"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def curve(self) -> Path:
        return self.path / "curve.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def evaluation(self, split: str) -> EvaluationFolder:
        """The default folder of ``mssl evaluate RUN --split SPLIT``."""
        return EvaluationFolder(self.path / "evaluation" / split)


@dataclass(frozen=True)
class EvaluationFolder(_Folder):
    """What ``mssl evaluate`` writes (into RUN/evaluation/SPLIT unless told otherwise)."""

    @property
    def summary(self) -> Path:
        """``summary.json``: the scores, per class and overall."""
        return self.path / "summary.json"

    @property
    def report(self) -> Path:
        """``summary.md``: the same for people."""
        return self.path / "summary.md"

    @property
    def per_case(self) -> Path:
        return self.path / "per_case.csv"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"


@dataclass(frozen=True)
class ProbeFolder(_Folder):
    """What ``mssl probe`` writes."""

    @property
    def result(self) -> Path:
        """``probe.json``: the scores and the probe's config."""
        return self.path / "probe.json"

    @property
    def report(self) -> Path:
        return self.path / "probe.md"

