"""``mssl prepare``: index and preprocess a data source once into a memory-mappable crop cache."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import chosen_options, config_option, fail, fail_environment, print_config_option, resolve_and_show, set_option
from mssl.config import PresetName, option_help
from mssl.data.config import OnError, PrepareConfig


def command(
    source: Optional[str] = typer.Argument(
        None,
        help="A folder (searched recursively for .nii/.nii.gz/.nrrd/.mha/.mhd and DICOM series), a quoted glob "
        "('data/**/*.nii.gz'), an MSD datalist JSON (or a folder holding dataset.json), or an nnU-Net raw dataset folder. "
        "Required, here or in --config.",
        show_default=False,
        metavar="SOURCE",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=f"{option_help(PrepareConfig, 'out')} Required, here or in --config.", show_default=False),
    preset: Optional[PresetName] = typer.Option(None, "--preset", help=option_help(PrepareConfig, "preset")),
    spacing: Optional[str] = typer.Option(
        None, "--spacing", help=option_help(PrepareConfig, "spacing", "Target voxel size in mm, e.g. --spacing 1.5 or 1.5,1.5,2.", unset="keep each volume's spacing")
    ),
    a_min: Optional[float] = typer.Option(None, "--a-min", help=option_help(PrepareConfig, "a_min")),
    a_max: Optional[float] = typer.Option(None, "--a-max", help=option_help(PrepareConfig, "a_max")),
    lower: Optional[float] = typer.Option(None, "--lower", help=option_help(PrepareConfig, "lower")),
    upper: Optional[float] = typer.Option(None, "--upper", help=option_help(PrepareConfig, "upper")),
    foreground_crop: Optional[bool] = typer.Option(None, "--foreground-crop/--no-foreground-crop", help=option_help(PrepareConfig, "foreground_crop")),
    channel_axis: Optional[int] = typer.Option(
        None, "--channel-axis", help=option_help(PrepareConfig, "channel_axis", "Axis holding channels in 4D images, e.g. -1.", unset="images must be 3D, or one file per channel")
    ),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=1, help=option_help(PrepareConfig, "workers")),
    on_error: Optional[OnError] = typer.Option(None, "--on-error", help=option_help(PrepareConfig, "on_error")),
    base_dir: Optional[Path] = typer.Option(None, "--base-dir", help=option_help(PrepareConfig, "base_dir", "Folder that datalist paths are relative to.", unset="the JSON's folder")),
    config: Optional[Path] = config_option(),
    set_: Optional[list[str]] = set_option(),
    print_config: bool = print_config_option(),
) -> None:
    """Preprocess every volume of SOURCE once into a cache that training reads random crops from.

    Each volume is reoriented to RAS, cropped to the body, resampled to --spacing and normalised by --preset.

    Labels follow with nearest interpolation. Images are stored as uncompressed float32 .npy (C, X, Y, Z).

    CACHE/index.json records source path and hash, original and new spacing/shape/affine, preset, split.

    Bad files get one line each; exit code 1 if --on-error stop hit one or no case of SOURCE is cached.

    Example: mssl prepare data/ --preset ct --spacing 1.5 --out cache/ --workers 2
    """
    flags = {name: value for name, value in locals().items() if name not in ("config", "set_", "print_config")}  # before any import
    from mssl.config import build_config
    from mssl.data.errors import DataError
    from mssl.data.prepare import prepare

    try:
        options = chosen_options(flags, set_)
        if print_config:
            resolve_and_show(PrepareConfig, config, options)
            return
        settings = build_config(PrepareConfig, config, **options)
    except ValueError as error:  # a bad option or config key: one line naming it
        fail(error)
    try:
        report = prepare(config=settings, progress=True)
    except DataError as error:
        fail(error, exit_code=1)
    except OSError as error:  # the cache folder cannot be written (read-only, permissions, disk full)
        fail_environment(error, settings.out)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)
