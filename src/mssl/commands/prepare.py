"""``mssl prepare``: index and preprocess a data source once into a memory-mappable crop cache."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from mssl.commands import fail, fail_environment, per_axis
from mssl.config import PresetName, Spacing3


def command(
    source: str = typer.Argument(
        ...,
        help="A folder (searched recursively for .nii/.nii.gz/.nrrd/.mha/.mhd and DICOM series), a quoted glob "
        "('data/**/*.nii.gz'), an MSD datalist JSON (or a folder holding dataset.json), or an nnU-Net raw dataset folder.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Cache folder to write (index.json + .npy arrays); rerunning on it skips unchanged cases."),
    preset: PresetName = typer.Option("ct", "--preset", help="ct: HU window → [0,1]; mri: percentile clip + z-score; none: intensities as read."),
    spacing: Optional[str] = typer.Option(None, "--spacing", help="Target voxel size in mm, e.g. --spacing 1.5 or 1.5,1.5,2; unset: keep each volume's spacing."),
    a_min: float = typer.Option(-1000.0, "--a-min", help="ct: HU mapped to 0."),
    a_max: float = typer.Option(1000.0, "--a-max", help="ct: HU mapped to 1."),
    lower: float = typer.Option(0.5, "--lower", help="mri: lower clipping percentile."),
    upper: float = typer.Option(99.5, "--upper", help="mri: upper clipping percentile."),
    foreground_crop: bool = typer.Option(True, "--foreground-crop/--no-foreground-crop", help="Crop each volume to the bounding box of the body."),
    channel_axis: Optional[int] = typer.Option(None, "--channel-axis", help="Axis holding channels in 4D images, e.g. -1. (default: images must be 3D, or one file per channel)"),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Parallel worker processes."),
    on_error: Literal["skip", "stop"] = typer.Option("skip", "--on-error", help="skip: report a bad file and go on; stop: stop at the first bad file."),
    base_dir: Optional[Path] = typer.Option(None, "--base-dir", help="Folder that datalist paths are relative to. (default: the JSON's folder)"),
) -> None:
    """Preprocess every volume of SOURCE once into a cache that training reads random crops from.

    Each volume is reoriented to RAS, cropped to the body, resampled to --spacing and normalised by --preset.

    Labels follow with nearest interpolation. Images are stored as uncompressed float32 .npy (C, X, Y, Z).

    CACHE/index.json records source path and hash, original and new spacing/shape/affine, preset, split.

    Bad files get one line each; exit code 1 if --on-error stop hit one or no case of SOURCE is cached.

    Example: mssl prepare data/ --preset ct --spacing 1.5 --out cache/ --workers 2
    """
    from pydantic import ValidationError

    from mssl.config import one_line_errors
    from mssl.data.errors import DataError
    from mssl.data.prepare import prepare

    options = dict(spacing=per_axis(Spacing3, spacing, "--spacing"), a_min=a_min, a_max=a_max, lower=lower, upper=upper, foreground_crop=foreground_crop, channel_axis=channel_axis)
    try:
        report = prepare(source, out, preset, workers=workers, on_error=on_error, base_dir=base_dir, progress=True, **options)
    except ValidationError as error:
        fail(one_line_errors(error))
    except DataError as error:
        fail(error, exit_code=1)
    except OSError as error:  # the cache folder cannot be written (read-only, permissions, disk full)
        fail_environment(error, out)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)
