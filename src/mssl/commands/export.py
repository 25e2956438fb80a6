"""``mssl export``: the encoder of a pre-training run as safetensors plus a provenance sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from mssl.commands import fail, fail_environment


def command(
    run: Path = typer.Argument(..., help="Run folder written by `mssl pretrain` (holds checkpoints/last.ckpt).", exists=True, file_okay=False),
    format: Literal["monai", "torch", "nnunet"] = typer.Option("monai", "--format", "-f", help="monai: encoder.safetensors in MONAI key layout (no pickle); torch: encoder.pt plain state dict; nnunet: nnunet_pretrained.pth for nnUNetv2_train -pretrained_weights plus nnunet_plans.json (plainconv/resenc runs)."),
    out: Optional[Path] = typer.Option(None, help="Output folder. (default: RUN/export)"),
    in_channels: Optional[int] = typer.Option(None, help="nnunet only: adapt the stem to this many input channels (see `mssl nnunet-plans`)."),
) -> None:
    """Export the pre-trained encoder of RUN with its provenance.

    Writes encoder.safetensors (or encoder.pt) and encoder.json: method, backbone class and constructor
    arguments, input channels, spacing, intensity preset, crop size, steps, data index hash, the resolved
    config and package versions. Swin weights load into monai.networks.nets.SwinUNETR (swinViT.* keys),
    U-Net weights into mssl's UNetBackbone; `mssl inspect` shows exactly what loads. nnU-Net networks
    (plainconv, resenc) export for nnU-Net v2 with --format nnunet; then see `mssl nnunet-plans`.

    Example: mssl export runs/s2dc --format monai
    """
    from rich.console import Console

    from mssl.weights.exporter import export
    from mssl.runs import sidecar_of
    from mssl.weights.sidecar import read_sidecar

    console = Console()
    try:
        weights = export(run, out=out, format=format, in_channels=in_channels)
    except (FileNotFoundError, ValueError) as error:
        fail(error)
    except OSError as error:  # the output cannot be written (read-only, permissions, disk full)
        fail_environment(error, out or run)
    sidecar = read_sidecar(weights)
    assert sidecar is not None and sidecar.network is not None  # export writes both
    console.print(f"[bold]exported[/bold] {weights}  ({sidecar.parameters or 0:,} parameters, step {sidecar.steps})", soft_wrap=True)
    console.print(f"sidecar  {sidecar_of(weights)}", soft_wrap=True)
    network = sidecar.network
    console.print(f"loads into {network.class_name}({', '.join(f'{k}={v}' for k, v in network.args.items())})", soft_wrap=True, markup=False)
