"""``mssl probe``: frozen-feature probes of a pre-trained encoder against a random one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import fail
from mssl.config import FeatureSource


def command(
    data: Path = typer.Option(..., help="Labelled dataset.json (the train split feeds the probes, the test split scores them)."),
    weights: Optional[Path] = typer.Option(None, help="Export or pre-training run folder; omit to probe a random encoder only."),
    out: Optional[Path] = typer.Option(None, help="Write probe.json and probe.md here."),
    train_cases: int = typer.Option(4, help="Training cases the probes are fitted on."),
    test_cases: int = typer.Option(4, help="Test cases the probes are scored on."),
    voxels_per_class: int = typer.Option(2000, help="Voxels sampled per class and case for the linear probe."),
    patch: int = typer.Option(16, help="Side of the cubes the patch classifier labels (voxels)."),
    size: Optional[str] = typer.Option(None, help="Pad/crop volumes to this size, e.g. 128 or 128,128,96. (default: next stride multiple)"),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names to report. (default: all)"),
    fit_steps: int = typer.Option(300, help="Adam steps fitting the linear voxel probe."),
    features: FeatureSource = typer.Option("encoder", help="encoder: the encoder's pyramid maps; decoder: the full network's last decoder map (GVSL's 1×1×1 linear protocol), for weights whose decoder was pre-trained (GVSL, both)."),
    seed: int = typer.Option(0, help="Seed of the case choice, voxel sampling and the random encoder."),
    random_baseline: bool = typer.Option(True, "--random-baseline/--no-random-baseline", help="Also probe a randomly initialised encoder."),
) -> None:
    """Minutes-on-CPU check of what an encoder learned, before any fine-tuning.

    Per-voxel linear segmentation on upsampled pyramid features (Dice per class) and patch-level kNN /
    logistic classification of the dominant organ, for the pre-trained encoder and a random one of the
    same architecture. Example:

        mssl probe --weights runs/s2dc --data openkbp/dataset.json
    """
    from rich.console import Console

    from mssl.config import build_config

    from mssl.downstream.config import ProbeConfig, parse_size
    from mssl.downstream.probe import probe

    console = Console()
    try:
        settings = build_config(
            ProbeConfig,
            None,
            data=data,
            weights=weights,
            out=out,
            train_cases=train_cases,
            test_cases=test_cases,
            voxels_per_class=voxels_per_class,
            patch=patch,
            size=parse_size(size) if size else None,
            classes=classes.split(",") if classes else None,
            fit_steps=fit_steps,
            features=features,
            seed=seed,
            random_baseline=random_baseline,
        )
        probe(settings, console=console)
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)
