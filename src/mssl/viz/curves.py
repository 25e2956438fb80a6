"""Loss curves from RUN/logs/metrics.csv (one panel per logged term, raw and smoothed) and, for runs
pre-trained with ``--probe``, the probe curve from RUN/logs/probes.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mssl.runs import PretrainRun

PREFIX = "train/"
PROBE_PREFIX = "probe/"
SKIPPED = ("train/lr", "train/crops_per_s")  # schedule and throughput, not losses
SMOOTHING_WINDOW = 10
PANEL_COLUMNS = 3
FIGURE_DPI = 110


def save_figure(figure: Figure, path: str | Path, title: str = "") -> Path:
    """Write ``figure`` (with an optional title) to ``path``, creating its folder."""
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _read_series(path: Path, prefix: str, skipped: tuple[str, ...] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (steps, values)}`` for every ``prefix*`` column of a CSV with a ``step`` column (empty cells skipped)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if not row.get("step"):
                continue
            for name, value in row.items():
                if name and name.startswith(prefix) and name not in skipped and value not in ("", None):
                    steps, values = series.setdefault(name[len(prefix) :], ([], []))
                    steps.append(float(row["step"]))
                    values.append(float(value))
    return {name: (np.asarray(s), np.asarray(v)) for name, (s, v) in series.items()}


def read_metrics(run: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (steps, values)}`` for every ``train/*`` column of the run's metrics.csv (empty cells skipped)."""
    path = PretrainRun(run).metrics
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training log; was this run written by `mssl pretrain`?")
    return _read_series(path, PREFIX, SKIPPED)


def read_probes(run: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The probe curve of a run pre-trained with ``--probe`` (``mean_dice``, ``dice/<class>``, ``knn``, ...); empty without."""
    path = PretrainRun(run).probes
    return _read_series(path, PROBE_PREFIX) if path.is_file() else {}


def moving_average(values: np.ndarray, window: int = SMOOTHING_WINDOW) -> np.ndarray:
    """Trailing mean over up to ``window`` points (same length as ``values``)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def plot_curves(run: str | Path, path: str | Path, title: str = "") -> Path:
    """One panel per term (loss first), raw values faint and the moving average bold; with ``--probe``,
    the probe Dice (mean and per class) and patch accuracies next to them."""
    series = read_metrics(run)
    if not series:
        raise ValueError(f"{PretrainRun(run).metrics}: no train/* values logged yet")
    probes = read_probes(run)
    names = sorted(series, key=lambda n: (n != "loss", n))
    panels = len(names) + (2 if probes else 0)
    rows = math.ceil(panels / PANEL_COLUMNS)
    figure = Figure(figsize=(4 * PANEL_COLUMNS, 2.8 * rows), dpi=FIGURE_DPI, layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, PANEL_COLUMNS)).ravel()
    for axis, name in zip(axes, names):
        steps, values = series[name]
        axis.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=0.8)
        axis.plot(steps, moving_average(values), color="tab:blue", linewidth=1.6)
        axis.set_title(name)
    if probes:
        _plot_probes(axes[len(names)], axes[len(names) + 1], probes)
    for axis in axes[:panels]:
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in axes[panels:]:
        axis.set_visible(False)
    return save_figure(figure, path, title)


def _plot_probes(dice_axis: Axes, patch_axis: Axes, probes: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Frozen-probe scores over training, on a fixed 0–1 axis: the voxel probe's Dice, the patch accuracies."""
    for name, (steps, values) in probes.items():
        if name.startswith("dice/"):
            dice_axis.plot(steps, values, linewidth=0.9, alpha=0.6, label=name[len("dice/") :])
    dice_axis.plot(*probes["mean_dice"], marker="o", color="black", linewidth=2.0, label="mean")
    dice_axis.set(title="probe: voxel Dice", ylim=(0, 1))
    dice_axis.legend(fontsize=6, ncol=2)
    for name, label in (("knn", "kNN"), ("linear", "linear")):
        patch_axis.plot(*probes[name], marker="o", label=label)
    patch_axis.set(title="probe: patch accuracy", ylim=(0, 1))
    patch_axis.legend(fontsize=7)


def plot_finetune_curve(metrics_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """A fine-tuning run's curves from its metrics.csv: training loss (raw and smoothed) and validation Dice
    (mean and per class) against steps, Dice on a fixed 0–1 axis so small differences are not magnified."""
    with Path(metrics_csv).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    trained = [r for r in rows if r["loss"]]  # the step-0 row holds only the initial network's validation
    steps = np.asarray([float(r["step"]) for r in trained])
    loss = np.asarray([float(r["loss"]) for r in trained])
    figure = Figure(figsize=(10, 3.6), dpi=FIGURE_DPI, layout="constrained")
    loss_axis, dice_axis = figure.subplots(1, 2)
    loss_axis.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8)
    loss_axis.plot(steps, moving_average(loss, 25), color="tab:blue", linewidth=1.6)
    loss_axis.set(title="training loss", xlabel="step")
    columns = [c for c in (rows[0].keys() if rows else []) if c.startswith("val_")]
    for column in columns:
        points = [(float(r["step"]), float(r[column])) for r in rows if r[column] not in ("", "nan")]
        if points:
            x, y = zip(*points)
            mean = column == "val_dice"
            dice_axis.plot(x, y, marker="o" if mean else None, linewidth=2.2 if mean else 1.0, alpha=1.0 if mean else 0.6,
                           color="black" if mean else None, label="mean" if mean else column[len("val_"):])
    dice_axis.set(title="validation Dice", xlabel="step", ylim=(0, 1))
    if columns:
        dice_axis.legend(fontsize=7, ncol=2)
    for axis in (loss_axis, dice_axis):
        axis.grid(alpha=0.3)
    return save_figure(figure, path, title)
