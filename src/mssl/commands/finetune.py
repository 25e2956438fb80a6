"""``mssl finetune``: supervised fine-tuning (segmentation or classification) from pre-trained weights or scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import fail, fail_environment

from mssl.config import BackboneName
from mssl.downstream.config import TaskName


def command(
    data: Optional[Path] = typer.Option(None, help="MSD-style dataset.json (entries with image, label, split, present_labels, ...)."),
    task: Optional[TaskName] = typer.Option(None, help="seg (voxel labels) or cls (a datalist key such as sex or age). (default: seg)"),
    weights: Optional[Path] = typer.Option(None, help="Export (encoder.safetensors) or pre-training run folder; omit to train from scratch."),
    labels: Optional[int] = typer.Option(None, help="Use k labelled training cases (seeded, nested across k). (default: all)"),
    seed: Optional[int] = typer.Option(None, help="Seed of the case choice, initialisation and crops. (default: 0)"),
    out: Optional[Path] = typer.Option(None, help="Run folder: model.json, best.safetensors, metrics.csv. (default: runs/finetune)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", exists=True, dir_okay=False, help="YAML with any FinetuneConfig keys; flags override it."),
    backbone: Optional[BackboneName] = typer.Option(None, help="Scratch network: swin (MONAI SwinUNETR) or unet. Ignored with --weights (the sidecar decides)."),
    feature_size: Optional[int] = typer.Option(None, help="Scratch SwinUNETR feature size (multiple of 12)."),
    window_size: Optional[int] = typer.Option(None, help="Scratch SwinUNETR attention window."),
    unet_channels: Optional[str] = typer.Option(None, help="Scratch U-Net widths, e.g. 32,64,128,256,512."),
    roi: Optional[str] = typer.Option(None, help="Training patch (seg) or whole-volume size (cls): 96 or 128,128,64; multiple of the network stride. (default: the median preprocessed shape, capped by --max-roi-voxels)"),
    max_roi_voxels: Optional[int] = typer.Option(None, help="Memory budget of the automatic patch, voxels. (default: 64·128·128)"),
    steps: Optional[str] = typer.Option(None, help="Optimiser steps, or auto: stop when validation Dice plateaus (at most --max-steps). (default: 1000)"),
    max_steps: Optional[int] = typer.Option(None, help="Horizon of --steps auto. (default: 4000)"),
    batch_size: Optional[int] = typer.Option(None, help="Cases per step, drawn with replacement. (default: 2)"),
    crops_per_case: Optional[int] = typer.Option(None, help="Patches per case and step (seg). (default: 1)"),
    foreground_fraction: Optional[float] = typer.Option(None, help="Share of patches centred on a labelled organ (seg). (default: 1/3, as nnU-Net)"),
    batch_dice: Optional[bool] = typer.Option(None, "--batch-dice/--case-dice", help="Pool each class's Dice over the batch, as nnU-Net does in 3D (seg); --case-dice: per case. (default: batch)"),
    deep_supervision: Optional[int] = typer.Option(None, help="U-Net: extra outputs at 1/2, 1/4, … resolution in the loss, weights 1/2**i as nnU-Net; 0 turns it off (seg). (default: 2 for the U-Net)"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="nnU-Net-style spatial and intensity augmentation (seg). (default: on)"),
    mirror_axes: Optional[str] = typer.Option(None, help="Axes mirrored in training and test-time augmentation, e.g. 1,2 or none. (default: all but left-right when classes name Left/Right)"),
    postprocess: Optional[bool] = typer.Option(None, "--postprocess/--no-postprocess", help="Keep-largest-component per class where it raises validation Dice (seg). (default: on)"),
    optimizer: Optional[str] = typer.Option(None, help="adamw or sgd (Nesterov, momentum 0.99, as nnU-Net; use --lr 1e-2); poly decay. (default: adamw)"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate. (default: 3e-3)"),
    freeze_encoder: Optional[bool] = typer.Option(None, "--freeze-encoder/--train-encoder", help="Keep the pre-trained encoder fixed."),
    val_every: Optional[int] = typer.Option(None, help="Validate every N steps (sliding window); the best checkpoint is kept and last.ckpt (for --resume) refreshed. (default: 100)"),
    val_cases: Optional[int] = typer.Option(None, help="Validate on at most N cases of the validation split. (default: all)"),
    target: Optional[str] = typer.Option(None, help="cls: the datalist key to predict; strings → classes, numbers → regression. (default: sex)"),
    preset: Optional[str] = typer.Option(None, help="Intensity preset ct, mri or none. (default: the weights', else from the modality)"),
    spacing: Optional[str] = typer.Option(None, help="Resample to this spacing in mm, e.g. 1.5,1.5,2. (default: the weights', else native)"),
    precision: Optional[str] = typer.Option(None, help="32, bf16-mixed or 16-mixed. (default: 32)"),
    accelerator: Optional[str] = typer.Option(None, help="auto, cpu, gpu, cuda or mps. (default: auto)"),
    devices: Optional[int] = typer.Option(None, help="Devices (several → DDP). (default: 1)"),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue the run in --out from its last.ckpt (refreshed at every validation)."),
    dry_run: Optional[bool] = typer.Option(None, "--dry-run", help="Run a few steps in a temporary folder, print the cost and a projection of the whole run, write nothing to --out."),
) -> None:
    """Fine-tune a network on k labelled cases and keep the best validation checkpoint.

    Segmentation uses MONAI SwinUNETR or the project's U-Net (whichever the weights were pre-trained
    on), DiceCE with partial labels (organs a case does not contour are ignored, never background),
    nnU-Net's recipe (patch from the data, a third of patches on an organ, augmentation, poly decay,
    output biases at the class prior, sliding-window validation, keep-largest-component where it helps); metrics.csv,
    TensorBoard and curve.png show convergence, result.json says whether it converged; the plan and a plain progress line
    every line_every_steps steps or line_every_s seconds go to the terminal or log file. Classification pools the encoder's
    bottleneck into a linear head (AUC/accuracy, or MAE for numbers such as age). Example:

        mssl finetune --data openkbp/dataset.json --weights runs/s2dc --labels 5 --out runs/ft
    """
    from contextlib import nullcontext

    from rich.console import Console

    from mssl.config import build_config
    from mssl.downstream.config import FinetuneConfig, parse_size, parse_spacing, parse_steps, parse_widths
    from mssl.downstream.finetune import finetune
    from mssl.train.checkpoint import NonFiniteStateError
    from mssl.train.run_lock import run_lock

    console = Console()
    try:
        settings = build_config(
            FinetuneConfig,
            config,
            data=data,
            task=task,
            weights=weights,
            labels=labels,
            seed=seed,
            out=out,
            backbone=backbone,
            feature_size=feature_size,
            window_size=window_size,
            unet_channels=parse_widths(unet_channels),
            roi=parse_size(roi) if roi else None,
            max_roi_voxels=max_roi_voxels,
            steps=parse_steps(steps),
            max_steps=max_steps,
            batch_size=batch_size,
            crops_per_case=crops_per_case,
            foreground_fraction=foreground_fraction,
            batch_dice=batch_dice,
            deep_supervision=deep_supervision,
            augment=augment,
            mirror_axes=(() if mirror_axes == "none" else tuple(int(a) for a in mirror_axes.split(","))) if mirror_axes else None,
            postprocess=postprocess,
            optimizer=optimizer,
            lr=lr,
            freeze_encoder=freeze_encoder,
            val_every=val_every,
            val_cases=val_cases,
            target=target,
            preset=preset,
            spacing=parse_spacing(spacing),
            precision=precision,
            accelerator=accelerator,
            devices=devices,
            resume=resume,
            dry_run=dry_run,
        )
        with nullcontext() if settings.dry_run else run_lock(settings.out):  # one writer per run folder
            finetune(settings, console=console)
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)
    except NonFiniteStateError as error:  # the fine-tuning diverged; the best weights so far are kept
        fail(error, exit_code=1)
    except OSError as error:  # the output cannot be written (read-only, permissions, disk full)
        fail_environment(error, out)
