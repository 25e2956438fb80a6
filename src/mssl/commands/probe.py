"""``mssl probe``: frozen-feature probes of a pre-trained encoder against a random one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import chosen_options, config_option, fail, print_config_option, resolve_and_show, set_option
from mssl.config import FeatureSource, option_help
from mssl.downstream.config import ProbeConfig


def command(
    data: Optional[Path] = typer.Option(None, help=option_help(ProbeConfig, "data", "Labelled dataset.json (the train split feeds the probes, the test split scores them).")),
    weights: Optional[Path] = typer.Option(None, help=option_help(ProbeConfig, "weights", "Export or pre-training run folder; omit to probe a random encoder only.")),
    out: Optional[Path] = typer.Option(None, help=option_help(ProbeConfig, "out", "Write probe.json and probe.md here.")),
    train_cases: Optional[int] = typer.Option(None, help=option_help(ProbeConfig, "train_cases", "Training cases the probes are fitted on.")),
    test_cases: Optional[int] = typer.Option(None, help=option_help(ProbeConfig, "test_cases")),
    voxels_per_class: Optional[int] = typer.Option(None, help=option_help(ProbeConfig, "voxels_per_class", "Voxels sampled per class and case for the linear probe.")),
    patch: Optional[int] = typer.Option(None, help=option_help(ProbeConfig, "patch", "Side of the cubes the patch classifier labels (voxels).")),
    size: Optional[str] = typer.Option(None, help=option_help(ProbeConfig, "size", "Pad/crop volumes to this size, e.g. 128 or 128,128,96.", unset="next stride multiple")),
    classes: Optional[str] = typer.Option(None, help=option_help(ProbeConfig, "classes", "Comma-separated class names to report.", unset="all")),
    fit_steps: Optional[int] = typer.Option(None, help=option_help(ProbeConfig, "fit_steps")),
    features: Optional[FeatureSource] = typer.Option(None, help=option_help(ProbeConfig, "features", "encoder: the encoder's pyramid maps; decoder: the full network's last decoder map (GVSL's 1×1×1 linear protocol), for weights whose decoder was pre-trained (GVSL, both).")),
    seed: Optional[int] = typer.Option(None, help=option_help(ProbeConfig, "seed", "Seed of the case choice, voxel sampling and the random encoder.")),
    random_baseline: Optional[bool] = typer.Option(None, "--random-baseline/--no-random-baseline", help=option_help(ProbeConfig, "random_baseline", "Also probe a randomly initialised encoder.")),
    config: Optional[Path] = config_option(),
    set_: Optional[list[str]] = set_option(),
    print_config: bool = print_config_option(),
) -> None:
    """Minutes-on-CPU check of what an encoder learned, before any fine-tuning.

    Per-voxel linear segmentation on upsampled pyramid features (Dice per class) and patch-level kNN /
    logistic classification of the dominant organ, for the pre-trained encoder and a random one of the
    same architecture. Example:

        mssl probe --weights runs/s2dc --data openkbp/dataset.json
    """
    flags = {name: value for name, value in locals().items() if name not in ("config", "set_", "print_config")}  # before any import
    from rich.console import Console

    from mssl.config import build_config
    from mssl.downstream.probe import probe

    try:
        options = chosen_options(flags, set_)
        if print_config:
            resolve_and_show(ProbeConfig, config, options)
            return
        probe(build_config(ProbeConfig, config, **options), console=Console())
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)
