"""``mssl nnunet-plans``: nnU-Net v2 plans for a target dataset that run the pre-trained network."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import fail, per_axis
from mssl.config import Size3, Spacing3


def command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Target nnU-Net dataset: DatasetXXX_Name, DatasetXXX or its id (planned already)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Run folder, export folder or nnunet_pretrained.pth (from `mssl export --format nnunet`).", exists=True),
    plans_name: str = typer.Option("nnUNetPlans_mssl", help="Name of the plans to write (nnUNetv2_train -p NAME)."),
    source_plans: str = typer.Option("nnUNetPlans", help="The target's own plans to start from."),
    configuration: str = typer.Option("3d_fullres", "--configuration", "-c", help="Configuration that runs the pre-trained network."),
    spacing: Optional[str] = typer.Option(None, help="Target spacing in the plans' axis order, e.g. 1.5 or 3,1.5,1.5. (default: the target's own)"),
    patch_size: Optional[str] = typer.Option(None, help="Patch size, e.g. 128 or 64,128,128; must be a multiple of the network's stride. (default: the target's, rounded down to one)"),
    preprocessed: Optional[Path] = typer.Option(None, help="nnU-Net's preprocessed folder. (default: $nnUNet_preprocessed)"),
) -> None:
    """Write plans for DATASET whose network is the pre-trained one, next to the target's own plans.

    Copies the architecture, keeps the target's spacing and its preprocessed data unless --spacing
    changes them, fits the patch size to the network's strides, and refuses what no plans can fix
    (input channels, intensity normalisation) with a message saying what to do instead.

    Example: mssl nnunet-plans --dataset Dataset501_OpenKBP --weights runs/gvsl
    """
    from rich.console import Console

    from mssl.weights.nnunet_plans import PlansError, write_nnunet_plans

    console = Console()
    try:
        sizes = per_axis(Spacing3, spacing, "--spacing"), per_axis(Size3, patch_size, "--patch-size")
        out, adapted = write_nnunet_plans(dataset, weights, plans_name, source_plans, configuration, *sizes, preprocessed)
    except (PlansError, FileNotFoundError) as error:
        fail(error)
    console.print(f"[bold]wrote[/bold] {out}", soft_wrap=True)
    for note in adapted.notes:
        console.print(f"  {note}", soft_wrap=True, markup=False)
    dataset_id = out.parent.name.removeprefix("Dataset").split("_")[0]
    if adapted.needs_preprocessing:
        console.print(f"nnUNetv2_preprocess -d {dataset_id} -plans_name {plans_name} -c {configuration}", soft_wrap=True, markup=False)
    weights_file = adapted.plans["mssl"]["weights"]
    console.print(f"nnUNetv2_train {dataset_id} {configuration} FOLD -p {plans_name} -pretrained_weights {weights_file}", soft_wrap=True, markup=False)
