"""``mssl evaluate``: Dice / HD95 (segmentation) or AUC / accuracy / MAE (classification) of a fine-tuned run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import fail


def command(
    run: Path = typer.Argument(..., help="A fine-tuned run folder (model.json + best.safetensors)."),
    data: Path = typer.Option(..., help="The dataset.json to score on (its labels must match the run's)."),
    split: str = typer.Option("test", help="Split to score: test, validation or train."),
    out: Optional[Path] = typer.Option(None, help="Output folder. (default: RUN/evaluation/SPLIT)"),
    classes: Optional[str] = typer.Option(None, help="Comma-separated class names to report, e.g. Brainstem,Mandible. (default: all)"),
    save_predictions: bool = typer.Option(True, "--save-predictions/--no-predictions", help="Write predictions as NIfTI with each input's affine."),
    max_cases: Optional[int] = typer.Option(None, help="Score only the first N cases (quick checks)."),
    tta: bool = typer.Option(True, "--tta/--no-tta", help="Average the predictions of the run's mirrored views (test-time augmentation)."),
    nsd_tolerance_mm: float = typer.Option(2.0, "--nsd-tolerance-mm", "--nsd-tolerance", help="Tolerance of the normalised surface Dice, mm."),
) -> None:
    """Score a fine-tuned run on a split with sliding-window inference.

    Segmentation: per-case and per-class Dice, HD95 and NSD (MONAI) on each input's own grid and
    spacing, with and without the run's keep-largest-component post-processing; organs a case does not
    contour are left out, never scored as background. Writes per_case.csv, summary.md (mean ± std) and
    predictions/*.nii.gz (post-processed). Example:

        mssl evaluate runs/ft --data openkbp/dataset.json --split test
    """
    from rich.console import Console

    from mssl.config import build_config

    from mssl.downstream.config import EvaluateConfig
    from mssl.downstream.evaluate import evaluate

    console = Console()
    try:
        settings = build_config(
            EvaluateConfig,
            None,
            run=run,
            data=data,
            split=split,
            out=out,
            classes=classes.split(",") if classes else None,
            save_predictions=save_predictions,
            max_cases=max_cases,
            tta=tta,
            nsd_tolerance_mm=nsd_tolerance_mm,
        )
        evaluate(settings, console=console)
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)
