"""``mssl benchmark``: the label-efficiency table (scratch vs pre-trainings × k labelled cases × seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import chosen_options, config_option, fail, print_config_option, resolve_and_show, set_option
from mssl.config import BackboneName, PresetName, option_help
from mssl.downstream.config import BenchmarkConfig


def command(
    data: Optional[Path] = typer.Option(None, help=option_help(BenchmarkConfig, "data", "Labelled dataset.json with a fixed test split (or fractions for one).")),
    methods: Optional[str] = typer.Option(None, help=option_help(BenchmarkConfig, "methods", "Comma-separated: scratch and pre-training methods (s2dc, gvsl, both).")),
    labels: Optional[str] = typer.Option(None, help=option_help(BenchmarkConfig, "labels", "Comma-separated numbers of labelled cases k.")),
    seeds: Optional[int] = typer.Option(None, help=option_help(BenchmarkConfig, "seeds", "Seeds per k (each picks its own k cases).")),
    runs: Optional[list[str]] = typer.Option(None, "--run", help=option_help(BenchmarkConfig, "runs", "Reuse a pre-training: METHOD=PATH (run folder or export); repeatable.")),
    out: Optional[Path] = typer.Option(None, help=option_help(BenchmarkConfig, "out", "Benchmark folder; re-running it resumes and skips finished runs.")),
    pretrain_steps: Optional[int] = typer.Option(None, help=option_help(BenchmarkConfig, "pretrain_steps", "Steps of each pre-training the benchmark runs itself.")),
    classes: Optional[str] = typer.Option(None, help=option_help(BenchmarkConfig, "classes", "Comma-separated class names in the table, e.g. Brainstem,SpinalCord,Mandible.", unset="all")),
    max_test_cases: Optional[int] = typer.Option(None, help=option_help(BenchmarkConfig, "max_test_cases", "Score on the first N test cases only (CPU budgets).", unset="all")),
    preset: Optional[PresetName] = typer.Option(None, help=option_help(BenchmarkConfig, "preset", "Intensity preset ct, mri or none (e.g. mri for a CT-pretrained encoder on MRI).", unset="the weights', else from the modality")),
    probe: Optional[bool] = typer.Option(None, "--probe/--no-probe", help=option_help(BenchmarkConfig, "probe", "Also run frozen-feature probes per pre-training.")),
    backbone: Optional[BackboneName] = typer.Option(None, help=option_help(BenchmarkConfig, "backbone", "Backbone of the pre-trainings and of scratch: swin, unet, plainconv or resenc.")),
    unet_channels: Optional[str] = typer.Option(None, help=option_help(BenchmarkConfig, "unet_channels", "U-Net widths, e.g. 8,16,32,64.")),
    feature_size: Optional[int] = typer.Option(None, help=option_help(BenchmarkConfig, "feature_size", "SwinUNETR feature size (multiple of 12).")),
    spacing: Optional[str] = typer.Option(None, help=option_help(BenchmarkConfig, "spacing", "Resample every volume to this spacing in mm, e.g. 4 or 4,4,3.", unset="native")),
    roi: Optional[str] = typer.Option(None, help=option_help(BenchmarkConfig, "roi", "Fine-tuning patch, e.g. 96 or 128,128,64.", unset="from the data, as mssl finetune")),
    finetune_steps: Optional[str] = typer.Option(None, help=option_help(BenchmarkConfig, "finetune_steps", "Fine-tuning steps per run, or auto.")),
    config: Optional[Path] = config_option(),
    set_: Optional[list[str]] = set_option(),
    print_config: bool = print_config_option(),
) -> None:
    """Pre-train (or reuse runs), fine-tune and evaluate every method × k × seed on a fixed test split.

    Resumable: every finished stage is on disk and skipped. Writes OUT/benchmark.md (mean ± std per
    method and k) and OUT/label_efficiency.png. Example:

        mssl benchmark --data openkbp/dataset.json --methods scratch,s2dc --labels 2,5,10 --seeds 3
    """
    flags = {name: value for name, value in locals().items() if name not in ("config", "set_", "print_config")}  # before any import
    from rich.console import Console

    from mssl.config import build_config
    from mssl.pipelines.benchmark import benchmark

    try:
        malformed = [item for item in runs or [] if "=" not in item]
        if malformed:
            raise ValueError(f"--run expects METHOD=PATH, got {malformed[0]!r}")
        flags["runs"] = dict(item.split("=", 1) for item in runs or []) or None
        options = chosen_options(flags, set_)
        if print_config:
            print_benchmark_config(config, options)
            return
        benchmark(build_config(BenchmarkConfig, config, **options), console=Console())
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)


def print_benchmark_config(config: Path | None, options: dict[str, object]) -> None:
    """The resolved benchmark config, then the keys its ``finetune:`` and ``probe_options:`` sections take."""
    from mssl.config import config_yaml

    resolve_and_show(BenchmarkConfig, config, options)
    for section, model in BenchmarkConfig.SECTION_MODELS.items():
        print(f"\n# keys of the {section}: section ({model.__name__}); data, out and the budget keys above are set per run")
        print("\n".join(f"#   {line}" for line in config_yaml(model).splitlines()))
