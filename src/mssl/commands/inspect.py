"""``mssl inspect``: which keys of a weight file load into SwinUNETR, the U-Net or nnU-Net's networks, module by module."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from mssl.commands import fail


def command(
    weights: Path = typer.Argument(..., help="safetensors / .pt / .pth / Lightning .ckpt file, or an export, pre-training or fine-tuning run folder.", exists=True),
    into: Optional[Literal["swinunetr", "unet", "plainconv", "resenc"]] = typer.Option(None, help="Target network: swinunetr (MONAI SwinUNETR), unet (mssl U-Net), plainconv / resenc (nnU-Net's own network, from the sidecar). (default: the backbone recorded in the sidecar, a fine-tuned run's model.json or a pre-training run's config, else guessed from the keys)"),
    in_channels: Optional[int] = typer.Option(None, min=1, help="Build the target for N input channels; stem kernels are adapted (e.g. 1-channel CT → 4-channel MRI)."),
    keys: bool = typer.Option(False, "--keys", help="Also list every missing and unexpected key (adapted and mismatched ones are always listed)."),
) -> None:
    """Report loaded / adapted / missing / unexpected / shape-mismatched keys per module.

    The target is built from the sidecar (encoder.json) when present, else from the tensor shapes, so
    third-party checkpoints (VoCo, MONAI SSL, nnssl, Lightning) can be checked before fine-tuning.
    Files are never unpickled: safetensors, or torch.load(weights_only=True). Exit code 1 when a tensor
    has no home or the wrong shape.

    Example: mssl inspect runs/s2dc/export/encoder.safetensors --into swinunetr --in-channels 4
    """
    from rich.console import Console

    from mssl.weights.inspect import inspect_weights
    from mssl.weights.sidecar import read_sidecar

    console = Console()
    try:
        report = inspect_weights(weights, into=into, in_channels=in_channels)
        sidecar = read_sidecar(Path(report.source))
    except (FileNotFoundError, ValueError) as error:
        fail(error)
    if sidecar:
        spacing = list(sidecar.spacing) if sidecar.spacing else None
        console.print(f"pre-trained with [bold]{sidecar.method}[/bold] for {sidecar.steps} steps; "
                      f"preset {sidecar.preset.name if sidecar.preset else None}, spacing {spacing}")
    console.print(report)
    for line in report.details():
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if keys:
        for kind in ("missing", "unexpected"):
            for key in getattr(report, kind):
                console.print(f"{kind:<10} {key}", markup=False, highlight=False, soft_wrap=True)
    verdict = "every tensor loaded" if report.ok else f"{len(report.unexpected)} unexpected, {len(report.mismatched)} mismatched"
    if report.untrained:
        verdict += f" ({len(report.untrained)} of them as initialised: {sidecar.method if sidecar else None} pre-training never changed them)"
    console.print(f"[bold]{verdict}[/bold]; {len(report.missing) + len(report.mismatched)} network tensors keep their initialisation")
    if not report.ok:
        raise typer.Exit(1)
