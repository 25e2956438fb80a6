"""TensorBoard + CSV loggers writing into RUN/logs, continuing (not erasing) the CSV on resume."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from mssl.runs import PretrainRun


class _ContinuingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv on start; a resumed run appends to it instead."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open(newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


class ContinuingCSVLogger(CSVLogger):
    """``CSVLogger`` with :class:`_ContinuingWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


def build_loggers(run_dir: Path) -> list:
    """TensorBoard events and ``metrics.csv`` side by side in RUN/logs."""
    logs = PretrainRun(run_dir).logs
    return [
        TensorBoardLogger(save_dir=logs.parent, name=logs.name, version="", default_hp_metric=False),
        ContinuingCSVLogger(save_dir=logs.parent, name=logs.name, version=""),
    ]


def drop_rows_after(metrics_csv: Path, step: int) -> None:
    """Keep only the rows of steps before ``step``: a run that crashed after its last checkpoint (at
    ``step``) logged steps that the resumed run will log again."""
    if not metrics_csv.is_file():
        return
    with metrics_csv.open(newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames or [], [row for row in reader if not row.get("step") or int(row["step"]) < step]
    with metrics_csv.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
