"""``mssl finetune``: supervised fine-tuning (segmentation or classification) from pre-trained weights or scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import chosen_options, config_option, fail, fail_environment, print_config_option, resolve_and_show, set_option
from mssl.config import BackboneName, Precision, PresetName, option_help
from mssl.downstream.config import FinetuneConfig, TaskName


def command(
    data: Optional[Path] = typer.Option(None, help=option_help(FinetuneConfig, "data", "MSD-style dataset.json (entries with image, label, split, present_labels, ...).")),
    task: Optional[TaskName] = typer.Option(None, help=option_help(FinetuneConfig, "task", "seg (voxel labels) or cls (a datalist key such as sex or age).")),
    weights: Optional[Path] = typer.Option(None, help=option_help(FinetuneConfig, "weights", "Export (encoder.safetensors) or pre-training run folder; omit to train from scratch.")),
    labels: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "labels", "Use k labelled training cases (seeded, nested across k).", unset="all")),
    seed: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "seed", "Seed of the case choice, initialisation and crops.")),
    out: Optional[Path] = typer.Option(None, help=option_help(FinetuneConfig, "out", "Run folder: model.json, best.safetensors, metrics.csv.")),
    config: Optional[Path] = config_option(),
    backbone: Optional[BackboneName] = typer.Option(None, help=option_help(FinetuneConfig, "backbone", "Scratch network: swin (MONAI SwinUNETR) or unet. Ignored with --weights (the sidecar decides).")),
    feature_size: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "feature_size", "Scratch SwinUNETR feature size (multiple of 12).")),
    window_size: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "window_size", "Scratch SwinUNETR attention window.")),
    unet_channels: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "unet_channels", "Scratch U-Net widths, e.g. 32,64,128,256,512.")),
    roi: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "roi", "Training patch (seg) or whole-volume size (cls): 96 or 128,128,64; multiple of the network stride.", unset="the median preprocessed shape, capped by --max-roi-voxels")),
    max_roi_voxels: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "max_roi_voxels", "Memory budget of the automatic patch, voxels.")),
    steps: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "steps", "Optimiser steps, or auto: stop when validation Dice plateaus (at most --max-steps).")),
    max_steps: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "max_steps", "Horizon of --steps auto.")),
    batch_size: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "batch_size", "Cases per step, drawn with replacement.")),
    crops_per_case: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "crops_per_case", "Patches per case and step (seg).")),
    foreground_fraction: Optional[float] = typer.Option(None, help=option_help(FinetuneConfig, "foreground_fraction", "Share of patches centred on a labelled organ (seg; nnU-Net: 1/3).")),
    batch_dice: Optional[bool] = typer.Option(None, "--batch-dice/--case-dice", help=option_help(FinetuneConfig, "batch_dice", "Pool each class's Dice over the batch, as nnU-Net does in 3D (seg); --case-dice: per case.")),
    deep_supervision: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "deep_supervision", "U-Net: extra outputs at 1/2, 1/4, … resolution in the loss, weights 1/2**i as nnU-Net; 0 turns it off (seg).", unset="2 for the U-Net, 0 otherwise")),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help=option_help(FinetuneConfig, "augment", "nnU-Net-style spatial and intensity augmentation (seg).")),
    mirror_axes: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "mirror_axes", "Axes mirrored in training and test-time augmentation, e.g. 1,2 or none.", unset="all but the left-right axis (found from the Left/Right organs) when classes name Left/Right")),
    postprocess: Optional[bool] = typer.Option(None, "--postprocess/--no-postprocess", help=option_help(FinetuneConfig, "postprocess", "Keep-largest-component per class where it raises validation Dice (seg).")),
    optimizer: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "optimizer", "adamw or sgd (Nesterov, momentum 0.99, as nnU-Net; use --lr 1e-2); poly decay.")),
    lr: Optional[float] = typer.Option(None, help=option_help(FinetuneConfig, "lr", "Peak learning rate.")),
    freeze_encoder: Optional[bool] = typer.Option(None, "--freeze-encoder/--train-encoder", help=option_help(FinetuneConfig, "freeze_encoder", "Keep the pre-trained encoder fixed.")),
    val_every: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "val_every", "Validate every N steps (sliding window); the best checkpoint is kept and last.ckpt (for --resume) refreshed.")),
    val_cases: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "val_cases", "Validate on at most N cases of the validation split.", unset="all")),
    target: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "target", "cls: the datalist key to predict; strings → classes, numbers → regression.")),
    preset: Optional[PresetName] = typer.Option(None, help=option_help(FinetuneConfig, "preset", "Intensity preset ct, mri or none.", unset="the weights', else from the modality")),
    spacing: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "spacing", "Resample to this spacing in mm, e.g. 1.5 or 1.5,1.5,2.", unset="the weights', else native")),
    precision: Optional[Precision] = typer.Option(None, help=option_help(FinetuneConfig, "precision", "32, bf16-mixed or 16-mixed.")),
    accelerator: Optional[str] = typer.Option(None, help=option_help(FinetuneConfig, "accelerator", "auto, cpu, gpu, cuda or mps.")),
    devices: Optional[int] = typer.Option(None, help=option_help(FinetuneConfig, "devices", "Devices (several → DDP).")),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help=option_help(FinetuneConfig, "resume", "Continue the run in --out from its last.ckpt (refreshed at every validation).")),
    dry_run: Optional[bool] = typer.Option(None, "--dry-run", help=option_help(FinetuneConfig, "dry_run", "Run a few steps in a temporary folder, print the cost and a projection of the whole run, write nothing to --out.")),
    set_: Optional[list[str]] = set_option(),
    print_config: bool = print_config_option(),
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
    flags = {name: value for name, value in locals().items() if name not in ("config", "set_", "print_config")}  # before any import
    from contextlib import nullcontext

    from rich.console import Console

    from mssl.config import build_config
    from mssl.downstream.finetune import finetune
    from mssl.train.checkpoint import NonFiniteStateError
    from mssl.train.memory import OutOfMemoryError
    from mssl.train.run_lock import run_lock

    if mirror_axes == "none":
        flags["mirror_axes"] = ()
    try:
        options = chosen_options(flags, set_)
        if print_config:
            resolve_and_show(FinetuneConfig, config, options)
            return
        settings = build_config(FinetuneConfig, config, **options)
        with nullcontext() if settings.dry_run else run_lock(settings.out):  # one writer per run folder
            finetune(settings, console=Console())
    except (FileNotFoundError, ValueError) as error:  # bad paths, options or data: one line, not a traceback
        fail(error)
    except (NonFiniteStateError, OutOfMemoryError) as error:  # diverged, or a step too large: the best weights so far are kept
        fail(error, exit_code=1)
    except OSError as error:  # the output cannot be written (read-only, permissions, disk full)
        fail_environment(error, out)
