"""The label-efficiency report: ``benchmark.md`` (mean ± std tables, paired differences to scratch,
probes, budgets), the Dice-vs-k plot and the terminal view of both."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from rich.console import Console
from rich.markdown import Markdown

from mssl.runs import FinetuneRun
from mssl.viz.tables import mean_std

SCRATCH = "scratch"
PLOT_FILE = "label_efficiency.png"
TIE_DICE = 0.0005  # a paired difference that prints as ±0.000 is a tie, not a win


class BenchmarkSettings(Protocol):
    """What the report states about the run: the fields of ``BenchmarkConfig`` it reads."""

    @property
    def data(self) -> Path: ...
    @property
    def out(self) -> Path: ...
    @property
    def methods(self) -> Sequence[str]: ...
    @property
    def labels(self) -> Sequence[int]: ...
    @property
    def seeds(self) -> int: ...
    @property
    def runs(self) -> Mapping[str, Path]: ...
    @property
    def pretrain_steps(self) -> int: ...
    @property
    def finetune(self) -> Mapping[str, object]: ...
    @property
    def max_test_cases(self) -> int | None: ...


@dataclass
class BenchmarkResult:
    """Test scores per (method, k): lists over seeds of the mean Dice / HD95 over the reported classes."""

    out: Path
    dice: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    hd95: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    per_class: dict[str, dict[int, dict[str, list[float]]]] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained: int = 0  # fine-tunings and pre-trainings this call actually ran (0 when everything was cached)


def show_report(console: Console, out: Path) -> None:
    """benchmark.md rendered for a terminal: tables drawn, the image link replaced by the plot's path."""
    report = (out / "benchmark.md").read_text(encoding="utf-8")
    console.print(Markdown(report.replace(f"![label efficiency]({PLOT_FILE})", "")))
    console.print(f"plot: {out / PLOT_FILE}")



def paired_to_scratch(result: BenchmarkResult) -> dict[str, dict[int, list[float]]]:
    """Per method and k, the per-seed test mean Dice minus scratch's.

    Seed s picks the same k labelled cases for every method, so the spread that comes from which cases
    were drawn cancels in the difference; seeds where either side is missing are dropped.
    """
    scratch = result.dice.get(SCRATCH)
    if scratch is None:
        return {}
    return {
        method: {
            k: [a - b for a, b in zip(values, scratch[k]) if np.isfinite(a) and np.isfinite(b)] for k, values in by_k.items() if k in scratch
        }
        for method, by_k in result.dice.items()
        if method != SCRATCH
    }


def _paired_cell(differences: list[float]) -> str:
    mean, std, n = mean_std(differences)
    if n == 0:
        return "–"
    better = sum(d >= TIE_DICE for d in differences)
    return f"{mean:+.3f} ± {std:.3f} ({better}/{n})"


def _cell(values: list[float], digits: int = 3) -> str:
    mean, std, n = mean_std(values)
    return "–" if n == 0 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def benchmark_markdown(result: BenchmarkResult, config: BenchmarkSettings, seconds: float) -> str:
    """The table: mean ± std over seeds of the test mean Dice (and HD95) per method and k."""
    ks = config.labels
    header = "| method | " + " | ".join(f"k={k}" for k in ks) + " |"
    rule = "|---|" + "---|" * len(ks)
    lines = [
        f"# Label efficiency on `{config.data}`",
        "",
        f"Test mean Dice over classes (mean ± std over {config.seeds} seed{'s' if config.seeds > 1 else ''}; k labelled training cases):",
        "",
        header,
        rule,
        *(f"| {m} | " + " | ".join(_cell(result.dice[m][k]) for k in ks) + " |" for m in config.methods),
        "",
    ]
    paired = paired_to_scratch(result)
    if paired:
        lines += [
            "Paired difference to scratch (per seed, the same labelled cases: method − scratch test mean Dice; "
            f"mean ± std, and in how many seeds the pre-trained encoder was better by at least {TIE_DICE}; smaller gaps are ties):",
            "",
            header,
            rule,
            *(f"| {m} | " + " | ".join(_paired_cell(paired[m].get(k, [])) for k in ks) + " |" for m in paired),
            "",
        ]
    lines += [
        "Test mean HD95 (mm) over classes:",
        "",
        header,
        rule,
        *(f"| {m} | " + " | ".join(_cell(result.hd95[m][k], 1) for k in ks) + " |" for m in config.methods),
        "",
        "Per-class Dice (mean ± std over seeds):",
        "",
    ]
    classes = next((list(pc[k]) for pc in result.per_class.values() for k in pc), [])
    lines += ["| method | k | " + " | ".join(classes) + " |", "|---|---|" + "---|" * len(classes)]
    for m in config.methods:
        for k in ks:
            lines.append(f"| {m} | {k} | " + " | ".join(_cell(result.per_class[m][k].get(c, [])) for c in classes) + " |")
    if result.probes:
        lines += ["", "Frozen-feature probes (pre-trained vs random encoder, test mean Dice of the voxel probe; patch kNN accuracy):", ""]
        lines += ["| method | pre-trained Dice | random Dice | pre-trained kNN | random kNN |", "|---|---|---|---|---|"]
        for m, p in result.probes.items():
            lines.append(
                f"| {m} | {p['pretrained']['mean_dice']:.3f} | {p['random']['mean_dice']:.3f} | "
                f"{p['pretrained']['knn_accuracy']:.3f} | {p['random']['knn_accuracy']:.3f} |"
            )
    times = list(seconds_of(config.out).values())
    lines += [
        "",
        f"![label efficiency]({PLOT_FILE})",
        "",
        f"Fine-tuning wall time: {len(times)} runs, {np.nansum(times) / 60:.1f} min in total, {np.nanmean(times):.0f} s per run."
        if times
        else "Fine-tuning wall time: not recorded (no finished run under this folder).",
        "",
        "Budgets: pre-training "
        + ("; ".join(f"{m}: given `{config.runs[m]}`" if m in config.runs else f"{m}: {config.pretrain_steps} steps" for m in config.methods if m != SCRATCH) or "none")
        + "; "
        f"fine-tuning overrides {config.finetune or 'defaults'}; test cases: {config.max_test_cases or 'all'}.",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; this call took {seconds / 60:.1f} min (cached stages are not re-run).",
    ]
    return "\n".join(lines) + "\n"


def plot_curves(result: BenchmarkResult, path: Path) -> Path:
    """Test mean Dice against k (log axis), one line per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import NullLocator

    figure, axis = plt.subplots(figsize=(5, 3.5), dpi=120)
    for method, by_k in result.dice.items():
        ks = sorted(by_k)
        stats = [mean_std(by_k[k]) for k in ks]
        axis.errorbar(ks, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=method)
    axis.set_xscale("log")
    ks_all = sorted({k for by_k in result.dice.values() for k in by_k})
    axis.set_xticks(ks_all, [str(k) for k in ks_all])
    axis.xaxis.set_minor_locator(NullLocator())  # no log-scale minor labels such as 3×10⁰
    axis.set_xlabel("labelled training cases (k)")
    axis.set_ylabel("test mean Dice")
    axis.set_ylim(0, 1)  # a fixed scale: a gap of 0.0001 must not look like a gap of 0.5
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def seconds_of(out: Path) -> dict[str, float]:
    """Wall time of every finished fine-tuning under ``out`` (from its result.json), for budget reports."""
    times = {}
    for folder in sorted((Path(out) / "finetune").glob("*/k*/seed*")):
        result_file = FinetuneRun(folder).result
        if result_file.is_file():
            times[str(result_file.parent.relative_to(out))] = float(json.loads(result_file.read_text(encoding="utf-8")).get("seconds", np.nan))
    return times
