"""``mssl.benchmark``: the few-label protocol — what pre-training is worth when labels are scarce.

For every method (``scratch`` or a pre-training), every k and seed: fine-tune on the k labelled cases
of the seed, score on the fixed test split. Pre-training sees only the train + validation images
(never the test split), unlabelled. Every stage writes its result to disk and is skipped when that
result exists, so an interrupted benchmark continues where it stopped and a finished one re-renders
its table without training. Layout of ``out``::

    pretrain_data.json, cache/                 unlabelled train + validation images (prepared once)
    pretrain/METHOD/export/encoder.safetensors  pre-training runs and their exports
    finetune/METHOD/kK/seedS/                   fine-tuned runs (+ evaluation/test/summary.json)
    probe/METHOD/probe.json                     frozen-feature probes
    benchmark.md, benchmark.json, label_efficiency.png
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markdown import Markdown

from mssl.config import build_config

from mssl.downstream.config import BenchmarkConfig, FinetuneConfig
from mssl.downstream.datasets import Dataset, load_dataset
from mssl.downstream.metrics import mean_std
from mssl.downstream.run_files import read_model_description, write_json
from mssl.runs import FinetuneRun, ProbeFolder, PretrainRun

SCRATCH = "scratch"
TEST_SPLIT = "test"
PLOT_FILE = "label_efficiency.png"
TIE_DICE = 0.0005  # a paired difference that prints as ±0.000 is a tie, not a win


@dataclass
class BenchmarkResult:
    """Test scores per (method, k): lists over seeds of the mean Dice / HD95 over the reported classes."""

    out: Path
    dice: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    hd95: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    per_class: dict[str, dict[int, dict[str, list[float]]]] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained: int = 0  # fine-tunings and pre-trainings this call actually ran (0 when everything was cached)


def pretraining_datalist(dataset: Dataset, out: Path) -> Path:
    """A datalist of the train + validation images only (absolute paths, no labels): the pre-training data."""
    entries = [
        {"image": [str(p.resolve()) for p in c.image_files] if c.other_channels else str(Path(c.image).resolve()), "split": split}
        for split in ("train", "validation")
        for c in sorted(dataset.splits[split], key=lambda c: c.case_id)
    ]
    path = out / "pretrain_data.json"
    write_json(path, {"name": f"{dataset.path} (train + validation, unlabelled)", "training": entries})
    return path


def pretrained_weights(method: str, config: BenchmarkConfig, dataset: Dataset, console: Console) -> tuple[Path, bool]:
    """The export of ``method``: a given run/export, a finished export in ``out``, or a new pre-training."""
    if method in config.runs:
        return Path(config.runs[method]), False
    from mssl.data.prepare import prepare
    from mssl.data.preprocess import PresetConfig
    from mssl.weights.exporter import export
    from mssl.train.pretrain import pretrain

    run = PretrainRun(config.out / "pretrain" / method)
    weights = run.export.encoder
    if weights.is_file():
        return weights, False
    cache = config.out / "cache"
    preset = PresetConfig(name=config.preset or dataset.default_preset(), spacing=config.spacing)
    report = prepare(pretraining_datalist(dataset, config.out), cache, preset)
    console.print(f"pre-training cache {cache}: {len(report.written)} written, {len(report.unchanged)} unchanged, {len(report.failed)} failed")
    console.print(f"[bold]pre-train {method}[/] ({config.pretrain_steps} steps) → {run.path}")
    resume = run.checkpoint.is_file()
    pretrain(
        method=method,
        data=cache,
        out=run.path,
        backbone=config.backbone.model_dump(),
        steps=config.pretrain_steps,
        resume=resume or None,
        **{**config.pretrain_overrides, **config.method_overrides.get(method, {})},
    )
    return export(run.path), True


def _finetune_config(config: BenchmarkConfig, method: str, weights: Path | None, k: int, seed: int) -> FinetuneConfig:
    values: dict[str, Any] = {
        "task": "seg",
        "data": config.data,
        "preset": config.preset,
        "spacing": config.spacing,
        "test_fraction": config.test_fraction,
        "validation_fraction": config.validation_fraction,
        "backbone": config.backbone,
        "weights": weights,
        "labels": k,
        "seed": seed,
        "out": config.out / "finetune" / method / f"k{k}" / f"seed{seed}",
    }
    return FinetuneConfig(**{**values, **config.finetune})


def run_one(config: BenchmarkConfig, method: str, weights: Path | None, k: int, seed: int, console: Console) -> tuple[dict[str, Any], bool]:
    """Fine-tune and evaluate one (method, k, seed) unless its evaluation already exists."""
    from mssl.downstream.evaluate import evaluate
    from mssl.downstream.finetune import finetune

    settings = _finetune_config(config, method, weights, k, seed)
    run = FinetuneRun(settings.out)
    summary_file = run.evaluation(TEST_SPLIT).summary
    if run.model.is_file():
        saved = read_model_description(settings.out)["config"]
        if saved != settings.model_dump(mode="json"):
            changed = sorted(k for k in saved if saved[k] != settings.model_dump(mode="json").get(k))
            raise ValueError(f"{settings.out} was fine-tuned with other settings ({', '.join(changed)}); use another --out to compare budgets")
    if summary_file.is_file():
        return json.loads(summary_file.read_text(encoding="utf-8")), False
    trained = False
    if not run.result.is_file():
        console.rule(f"{method} · k={k} · seed {seed}")
        finetune(settings, console=console)
        trained = True
    evaluate(
        run=settings.out,
        data=config.data,
        split=TEST_SPLIT,
        classes=config.classes,
        max_cases=config.max_test_cases,
        save_predictions=False,
        test_fraction=config.test_fraction,
        validation_fraction=config.validation_fraction,
        console=console,
    )
    return json.loads(summary_file.read_text(encoding="utf-8")), trained


def run_probe(config: BenchmarkConfig, method: str, weights: Path, console: Console) -> dict[str, Any]:
    from mssl.downstream.probe import probe

    out = ProbeFolder(config.out / "probe" / method)
    if not out.result.is_file():
        options = {"classes": config.classes, "preset": config.preset, "spacing": config.spacing, **config.probe_options}
        probe(data=config.data, weights=weights, out=out.path, console=console, **options)
    return json.loads(out.result.read_text(encoding="utf-8"))


def benchmark(config: BenchmarkConfig | None = None, console: Console | None = None, **overrides: Any) -> BenchmarkResult:
    """Run (or resume) the label-efficiency benchmark and write ``benchmark.md`` and the PNG curves.

    ``mssl.benchmark(data="dataset.json", methods=["scratch", "s2dc"], labels=[2, 5], seeds=3)`` ≡
    ``mssl benchmark --data dataset.json --methods scratch,s2dc --labels 2,5 --seeds 3``.
    """
    config = build_config(BenchmarkConfig, config, **overrides)
    console = console or Console()
    config.out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(config.data, config.test_fraction, config.validation_fraction)
    result = BenchmarkResult(config.out)
    start = time.perf_counter()
    for method in config.methods:
        weights, pretrained_now = (None, False) if method == SCRATCH else pretrained_weights(method, config, dataset, console)
        result.trained += pretrained_now
        result.dice[method], result.hd95[method], result.per_class[method] = {}, {}, {}
        for k in config.labels:
            dice, hd95, per_class = [], [], {}
            for seed in range(config.seeds):
                summary, trained = run_one(config, method, weights, k, seed, console)
                result.trained += trained
                dice.append(summary["scores"]["mean_dice"])
                hd95.append(summary["scores"]["mean_hd95"])
                for name, values in summary["per_class"].items():
                    per_class.setdefault(name, []).append(values["dice"])
            result.dice[method][k], result.hd95[method][k], result.per_class[method][k] = dice, hd95, per_class
        if config.probe and weights is not None:
            result.probes[method] = run_probe(config, method, weights, console)
    write_json(
        config.out / "benchmark.json",
        {
            "config": config.model_dump(mode="json"),
            "dice": result.dice,
            "hd95": result.hd95,
            "per_class": result.per_class,
            "dice_minus_scratch": paired_to_scratch(result),
            "probes": result.probes,
        },
    )
    plot_curves(result, config.out / PLOT_FILE)
    (config.out / "benchmark.md").write_text(benchmark_markdown(result, config, time.perf_counter() - start), encoding="utf-8")
    show_report(console, config.out)
    return result


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


def benchmark_markdown(result: BenchmarkResult, config: BenchmarkConfig, seconds: float) -> str:
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
