"""``mssl visualize``: structure maps of the encoder's features, GVSL registration overlays, loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import fail, per_axis
from mssl.config import PresetName, Spacing3


def command(
    run: Path = typer.Argument(..., help="Run folder written by `mssl pretrain`.", exists=True, file_okay=False),
    volume: Path = typer.Option(..., "--volume", "-v", help="Image to show (NIfTI, NRRD, MHA or a DICOM series folder).", exists=True),
    out: Optional[Path] = typer.Option(None, help="Folder for the PNGs. (default: RUN/figures)"),
    moving: Optional[Path] = typer.Option(None, help="GVSL: the image registered onto --volume. (default: another case of the run's cache)", exists=True),
    stride: int = typer.Option(4, help="Encoder pyramid level shown, by its stride (2, 4, 8, 16, 32 for swin; 1, 2, 4, ... for unet)."),
    clusters: int = typer.Option(6, min=2, max=10, help="k of the k-means structure map."),
    preset: Optional[PresetName] = typer.Option(None, help="Preprocessing of --volume when the run's cache is gone. (default: the cache's preset)"),
    spacing: Optional[str] = typer.Option(None, help="With --preset: target spacing in mm, e.g. --spacing 1.5 or 1.5,1.5,2."),
    seed: int = typer.Option(0, help="Seed of the k-means, the PCA and GVSL's appearance damage."),
) -> None:
    """Draw what a pre-trained encoder learned, as PNGs.

    features.png: the encoder's patch features on axial, coronal and sagittal slices, as a PCA → RGB map
    and a k-means structure map (same colour = similar features). registration.png (GVSL runs): fixed,
    moving and warped images with the deformation grid. curves.png: every logged loss term over steps,
    and the frozen-probe curve of runs pre-trained with --probe.
    The volume is preprocessed like the run's training data.

    Example: mssl visualize runs/gvsl --volume data/case_001.nii.gz
    """
    from rich.console import Console

    from mssl.data.errors import DataError
    from mssl.viz.visualize import visualize

    try:
        paths = visualize(run, volume, out=out, moving=moving, stride=stride, clusters=clusters, preset=preset, spacing=per_axis(Spacing3, spacing, "--spacing"), seed=seed)
    except (FileNotFoundError, ValueError, DataError) as error:
        fail(error)
    console = Console()
    for path in paths:
        console.print(f"wrote {path}")
