"""``mssl benchmark``: the label-efficiency table (scratch vs pre-trainings × k labelled cases × seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import fail


def command(
    data: Optional[Path] = typer.Option(None, help="Labelled dataset.json with a fixed test split (or fractions for one)."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated: scratch and pre-training methods (s2dc, gvsl, both). (default: scratch,s2dc,gvsl)"),
    labels: Optional[str] = typer.Option(None, help="Comma-separated numbers of labelled cases k. (default: 2,5,10)"),
    seeds: Optional[int] = typer.Option(None, help="Seeds per k (each picks its own k cases). (default: 3)"),
    runs: Optional[list[str]] = typer.Option(None, "--run", help="Reuse a pre-training: METHOD=PATH (run folder or export); repeatable."),
    out: Optional[Path] = typer.Option(None, help="Benchmark folder; re-running it resumes and skips finished runs. (default: runs/benchmark)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False, help="YAML with any BenchmarkConfig keys (finetune:, pretrain_overrides:, backbone:, ...); flags override it."),
    pretrain_steps: Optional[int] = typer.Option(None, help="Steps of each pre-training the benchmark runs itself. (default: 1000)"),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names in the table, e.g. Brainstem,SpinalCord,Mandible. (default: all)"),
    max_test_cases: Optional[int] = typer.Option(None, help="Score on the first N test cases only (CPU budgets)."),
    preset: Optional[str] = typer.Option(None, help="Intensity preset ct, mri or none (e.g. mri for a CT-pretrained encoder on MRI)."),
    probe: Optional[bool] = typer.Option(None, "--probe/--no-probe", help="Also run frozen-feature probes per pre-training. (default: on)"),
    backbone: Optional[str] = typer.Option(None, help="Backbone of the pre-trainings and of scratch: swin, unet, plainconv or resenc. (default: swin)"),
    unet_channels: Optional[str] = typer.Option(None, help="U-Net widths, e.g. 8,16,32,64. (default: 32,64,128,256,512)"),
    feature_size: Optional[int] = typer.Option(None, help="SwinUNETR feature size (multiple of 12). (default: 48)"),
    spacing: Optional[str] = typer.Option(None, help="Resample every volume to this spacing in mm, e.g. 4,4,3. (default: native)"),
    roi: Optional[str] = typer.Option(None, help="Fine-tuning patch, e.g. 96 or 128,128,64. (default: from the data, as mssl finetune)"),
    finetune_steps: Optional[str] = typer.Option(None, help="Fine-tuning steps per run, or auto. (default: as mssl finetune)"),
    print_config: bool = typer.Option(False, "--print-config", help="Print every YAML key with its default and exit."),
) -> None:
    """Pre-train (or reuse runs), fine-tune and evaluate every method × k × seed on a fixed test split.

    Resumable: every finished stage is on disk and skipped. Writes OUT/benchmark.md (mean ± std per
    method and k) and OUT/label_efficiency.png. Example:

        mssl benchmark --data openkbp/dataset.json --methods scratch,s2dc --labels 2,5,10 --seeds 3
    """
    from rich.console import Console

    from mssl.downstream.benchmark import benchmark
    from mssl.config import build_config
    from mssl.downstream.config import BenchmarkConfig, parse_size, parse_spacing, parse_steps, parse_widths

    console = Console()
    if print_config:
        print_benchmark_schema()
        return
    try:
        malformed = [item for item in runs or [] if "=" not in item]
        if malformed:
            raise ValueError(f"--run expects METHOD=PATH, got {malformed[0]!r}")
        given = dict(item.split("=", 1) for item in runs or [])
        settings = build_config(
            BenchmarkConfig,
            config,
            data=data,
            methods=methods.split(",") if methods else None,
            labels=[int(k) for k in labels.split(",")] if labels else None,
            seeds=seeds,
            runs=given or None,
            out=out,
            pretrain_steps=pretrain_steps,
            classes=classes.split(",") if classes else None,
            max_test_cases=max_test_cases,
            preset=preset,
            probe=probe,
            backbone=backbone,
            unet_channels=parse_widths(unet_channels),
            feature_size=feature_size,
            spacing=parse_spacing(spacing),
            roi=parse_size(roi) if roi else None,
            finetune_steps=parse_steps(finetune_steps),
        )
        benchmark(settings, console=console)
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)


def print_benchmark_schema() -> None:
    """The benchmark's YAML keys with defaults, then the keys its ``finetune:`` and ``probe_options:`` sections take."""
    from mssl.config import defaults_yaml
    from mssl.downstream.config import BenchmarkConfig, FinetuneConfig, ProbeConfig

    print(defaults_yaml(BenchmarkConfig))
    for section, model in (("finetune", FinetuneConfig), ("probe_options", ProbeConfig)):
        print(f"\n# keys of the {section}: section ({model.__name__}); data, out and the budget keys above are set per run")
        print("\n".join(f"#   {line}" for line in defaults_yaml(model).splitlines()))
