"""``mssl evaluate``: Dice / HD95 (segmentation) or AUC / accuracy / MAE (classification) of a fine-tuned run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import chosen_options, config_option, fail, print_config_option, resolve_and_show, set_option
from mssl.config import option_help
from mssl.downstream.config import EvaluateConfig


def command(
    run: Path = typer.Argument(..., help=option_help(EvaluateConfig, "run", "A fine-tuned run folder (model.json + best.safetensors).")),
    data: Optional[Path] = typer.Option(None, help=option_help(EvaluateConfig, "data", "The dataset.json to score on (its labels must match the run's).")),
    split: Optional[str] = typer.Option(None, help=option_help(EvaluateConfig, "split", "Split to score: test, validation or train.")),
    out: Optional[Path] = typer.Option(None, help=option_help(EvaluateConfig, "out", "Output folder.", unset="RUN/evaluation/SPLIT")),
    classes: Optional[str] = typer.Option(None, help=option_help(EvaluateConfig, "classes", "Comma-separated class names to report, e.g. Brainstem,Mandible.", unset="all")),
    save_predictions: Optional[bool] = typer.Option(None, "--save-predictions/--no-predictions", help=option_help(EvaluateConfig, "save_predictions", "Write predictions as NIfTI with each input's affine.")),
    max_cases: Optional[int] = typer.Option(None, help=option_help(EvaluateConfig, "max_cases", "Score only the first N cases (quick checks).", unset="all")),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help=option_help(EvaluateConfig, "tta", "Average the predictions of the run's mirrored views (test-time augmentation).")),
    nsd_tolerance_mm: Optional[float] = typer.Option(None, "--nsd-tolerance-mm", "--nsd-tolerance", help=option_help(EvaluateConfig, "nsd_tolerance_mm", "Tolerance of the normalised surface Dice, mm.")),
    config: Optional[Path] = config_option(),
    set_: Optional[list[str]] = set_option(),
    print_config: bool = print_config_option(),
) -> None:
    """Score a fine-tuned run on a split with sliding-window inference.

    Segmentation: per-case and per-class Dice, HD95 and NSD (MONAI) on each input's own grid and
    spacing, with and without the run's keep-largest-component post-processing; organs a case does not
    contour are left out, never scored as background. Writes per_case.csv, summary.md (mean ± std) and
    predictions/*.nii.gz (post-processed). Example:

        mssl evaluate runs/ft --data openkbp/dataset.json --split test
    """
    flags = {name: value for name, value in locals().items() if name not in ("config", "set_", "print_config")}  # before any import
    from rich.console import Console

    from mssl.config import build_config
    from mssl.downstream.evaluate import evaluate

    try:
        options = chosen_options(flags, set_)
        if print_config:
            resolve_and_show(EvaluateConfig, config, options)
            return
        evaluate(build_config(EvaluateConfig, config, **options), console=Console())
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)
