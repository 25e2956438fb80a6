"""``mssl pretrain``: self-supervised pre-training of an encoder with S²DC, GVSL or both."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import chosen_options, config_option, fail, fail_environment, print_config_option, set_option, show_config
from mssl.config import BackboneName, MethodName, OptimizerName, Precision, PretrainConfig, StrategyName, option_help

RECIPE = "the method's recipe"


def command(
    config: Optional[Path] = config_option(),
    method: Optional[MethodName] = typer.Option(None, help=option_help(PretrainConfig, "method", "Objective: s2dc, gvsl, or both on one shared backbone.")),
    data: Optional[Path] = typer.Option(None, help=option_help(PretrainConfig, "data", "Cache folder written by `mssl prepare`.")),
    split: Optional[str] = typer.Option(None, help=option_help(PretrainConfig, "split", "Train on the cases of this split of the cache only, e.g. train.", unset="all cases")),
    out: Optional[Path] = typer.Option(None, help=option_help(PretrainConfig, "out", "Run folder (config, checkpoints, logs, summary).")),
    backbone: Optional[BackboneName] = typer.Option(None, help=option_help(PretrainConfig, "backbone", "Encoder: swin (MONAI SwinUNETR v2), unet (GVSL 3D U-Net, the default of --method gvsl), or nnU-Net's plainconv / resenc (sizes: --set backbone.nnunet.preset=default|tiny or backbone.nnunet.plans=PLANS.json).")),
    roi: Optional[str] = typer.Option(None, help=option_help(PretrainConfig, "s2dc.roi", "Crop size in voxels, e.g. 96 or 96,96,64 (S²DC grid crop, a cube; GVSL crop), for the objectives trained.")),
    steps: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "steps", "Optimiser steps.")),
    batch_size: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "batch_size", "Samples per device per micro-batch (--method gvsl: 2, its paper's).")),
    accumulate: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "accumulate", "Micro-batches per optimiser step.")),
    workers: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "workers", "DataLoader workers reading the cache.")),
    accelerator: Optional[str] = typer.Option(None, help=option_help(PretrainConfig, "accelerator", "auto, cpu, gpu, cuda or mps.")),
    devices: Optional[str] = typer.Option(None, help=option_help(PretrainConfig, "devices", "Devices per node: a number or 'auto'.")),
    num_nodes: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "num_nodes", "Nodes (multi-node runs start through torchrun or SLURM).")),
    strategy: Optional[StrategyName] = typer.Option(None, help=option_help(PretrainConfig, "strategy", "auto, or ddp for several devices.")),
    precision: Optional[Precision] = typer.Option(None, help=option_help(PretrainConfig, "precision", "32, bf16-mixed or 16-mixed; the mixed ones keep NCC, Sinkhorn, logits and warps in float32.")),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=option_help(PretrainConfig, "compile", "torch.compile the backbone(s); the compile time is logged after the first step.")),
    checkpoint_activations: Optional[bool] = typer.Option(None, "--checkpoint-activations/--no-checkpoint-activations", help=option_help(PretrainConfig, "checkpoint_activations", "Recompute backbone activations in the backward pass (swin, unet): less memory, slower steps.")),
    optimizer: Optional[OptimizerName] = typer.Option(None, help=option_help(PretrainConfig, "optimizer", "adamw or adam.", unset=RECIPE)),
    lr: Optional[float] = typer.Option(None, help=option_help(PretrainConfig, "lr", "Peak learning rate.", unset=RECIPE)),
    weight_decay: Optional[float] = typer.Option(None, help=option_help(PretrainConfig, "weight_decay", "Weight decay.", unset=RECIPE)),
    warmup_steps: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "warmup_steps", "Linear warm-up steps before the cosine.", unset=RECIPE)),
    grad_clip: Optional[float] = typer.Option(None, help=option_help(PretrainConfig, "grad_clip", "Clip the gradient norm to this value.", unset="off")),
    checkpoint_every: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "checkpoint_every", "Steps between checkpoints (last.ckpt is refreshed with each).")),
    keep_checkpoints: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "keep_checkpoints", "Periodic checkpoints kept besides last.ckpt: the K newest; -1 keeps all.")),
    max_nonfinite: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "max_nonfinite", "Stop after this many non-finite losses in a row (each one skips its step).")),
    log_every: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "log_every", "Log scalars every n steps.")),
    seed: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "seed", "Seed of every random draw (crops, views, init).")),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help=option_help(PretrainConfig, "resume", "Continue the run in --out exactly from checkpoints/last.ckpt.")),
    progress_bar: Optional[bool] = typer.Option(None, "--progress/--no-progress", help=option_help(PretrainConfig, "progress_bar", "Progress bar on a terminal; off, or in a log file: a plain line every logging.line_every_steps steps or line_every_s seconds.")),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run a few steps on one device, print the cost and a projection of the whole run, write nothing to --out."),
    probe: Optional[Path] = typer.Option(None, help=option_help(PretrainConfig, "probe", "Labelled dataset.json: frozen voxel probe + patch kNN of the encoder at step 0, every --probe-every steps and at the end, logged to TensorBoard and RUN/logs/probes.csv. Sizes: --set probe.train_cases=2 --set probe.fit_steps=100 (also probe.test_cases, probe.voxels_per_class, probe.patch, probe.size, probe.features=decoder).", unset="off")),
    probe_every: Optional[int] = typer.Option(None, help=option_help(PretrainConfig, "probe_every", "Optimiser steps between probes.")),
    set_: Optional[list[str]] = set_option(),
    print_config: bool = print_config_option(),
) -> None:
    """Pre-train an encoder with S²DC, GVSL or both, on CPU or many GPUs, resumable after any crash.

    Options come from built-in defaults, then --config YAML, then flags, then --set (the same order in every
    command). The resolved config is saved as OUT/config.yaml; `mssl pretrain --out OUT --resume` continues a run with it.

    Example: mssl pretrain --method s2dc --data cache/ --out runs/s2dc --devices 8 --strategy ddp --precision bf16-mixed
    """
    flags = {name.rstrip("_"): value for name, value in locals().items() if name not in ("config", "set_", "print_config", "dry_run")}  # before any import
    from mssl.config import ConfigError
    from mssl.data.errors import DataError
    from mssl.train.checkpoint import NonFiniteStateError
    from mssl.train.memory import OutOfMemoryError
    from mssl.train.module import NonFiniteLossError
    from mssl.pipelines.pretrain import pretrain
    from mssl.train.pretrain import resolve_config

    flags["devices"] = _devices(devices)
    try:
        options = chosen_options(flags, set_)
        if print_config:
            show_config(PretrainConfig, resolve_config(config, **options).model_dump(mode="json"))
            return
        pretrain(config, dry_run=dry_run, **options)
    except (ConfigError, DataError) as error:
        fail(error)
    except (NonFiniteLossError, NonFiniteStateError, OutOfMemoryError) as error:
        fail(error, exit_code=1)
    except OSError as error:  # the run folder cannot be written (read-only, permissions, disk full)
        fail_environment(error, out)


def _devices(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    if value.isdigit():
        return int(value)
    raise typer.BadParameter(f"expected a number or 'auto', got {value!r}", param_hint="--devices")
