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
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from mssl.config import build_config
from mssl.downstream.config import BenchmarkConfig, FinetuneConfig
from mssl.downstream.datasets import Dataset, load_dataset
from mssl.downstream.run_files import write_json
from mssl.runs import FinetuneRun, ProbeFolder, PretrainRun
from mssl.viz.benchmark_report import PLOT_FILE, SCRATCH, BenchmarkResult, benchmark_markdown, paired_to_scratch, plot_curves, show_report

TEST_SPLIT = "test"


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
    from mssl.pipelines.pretrain import pretrain

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
        saved = run.description()["config"]
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
