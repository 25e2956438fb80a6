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
) -> None:
    """Pre-train (or reuse runs), fine-tune and evaluate every method × k × seed on a fixed test split.

    Resumable: every finished stage is on disk and skipped. Writes OUT/benchmark.md (mean ± std per
    method and k) and OUT/label_efficiency.png. Example:

        mssl benchmark --data openkbp/dataset.json --methods scratch,s2dc --labels 2,5,10 --seeds 3
    """
    from rich.console import Console

    from mssl.downstream.benchmark import benchmark
    from mssl.downstream.config import BenchmarkConfig, build_config

    console = Console()
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
        )
        benchmark(settings, console=console)
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)
