"""``mssl pretrain``: self-supervised pre-training of an encoder with S²DC, GVSL or both."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mssl.commands import fail, fail_environment

from mssl.config import BackboneName, MethodName, OptimizerName, Precision, StrategyName


_DEVICES_HELP = "Devices per node: a number or 'auto'."


def command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with any options; flags override it.", exists=True, dir_okay=False),
    method: Optional[MethodName] = typer.Option(None, help="Objective: s2dc, gvsl, or both on one shared backbone. (default: s2dc)"),
    data: Optional[Path] = typer.Option(None, help="Cache folder written by `mssl prepare`."),
    split: Optional[str] = typer.Option(None, help="Train on the cases of this split of the cache only, e.g. train. (default: all cases)"),
    out: Optional[Path] = typer.Option(None, help="Run folder (config, checkpoints, logs, summary). (default: runs/pretrain)"),
    backbone: Optional[BackboneName] = typer.Option(None, help="Encoder: swin (MONAI SwinUNETR v2), unet (GVSL 3D U-Net), or nnU-Net's plainconv / resenc (sizes: --set backbone.nnunet.preset=default|tiny or backbone.nnunet.plans=PLANS.json). (default: swin)"),
    roi: Optional[int] = typer.Option(None, help="Crop side in voxels (S²DC grid crop; GVSL cube)."),
    steps: Optional[int] = typer.Option(None, help="Optimiser steps. (default: 100000)"),
    batch_size: Optional[int] = typer.Option(None, help="Samples per device per micro-batch. (default: 1)"),
    accumulate: Optional[int] = typer.Option(None, help="Micro-batches per optimiser step. (default: 1)"),
    workers: Optional[int] = typer.Option(None, help="DataLoader workers reading the cache. (default: 2)"),
    accelerator: Optional[str] = typer.Option(None, help="auto, cpu, gpu, cuda or mps. (default: auto)"),
    devices: Optional[str] = typer.Option(None, help=_DEVICES_HELP + " (default: 1)"),
    num_nodes: Optional[int] = typer.Option(None, help="Nodes (multi-node runs start through torchrun or SLURM). (default: 1)"),
    strategy: Optional[StrategyName] = typer.Option(None, help="auto, or ddp for several devices. (default: auto)"),
    precision: Optional[Precision] = typer.Option(None, help="32, bf16-mixed or 16-mixed; the mixed ones keep NCC, Sinkhorn, logits and warps in float32. (default: 32)"),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the backbone(s); the compile time is logged after the first step. (default: off)"),
    checkpoint_activations: Optional[bool] = typer.Option(None, "--checkpoint-activations/--no-checkpoint-activations", help="Recompute backbone activations in the backward pass (swin, unet): less memory, slower steps. (default: off)"),
    optimizer: Optional[OptimizerName] = typer.Option(None, help="adamw or adam. (default: the method's recipe)"),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate. (default: the method's recipe)"),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay. (default: the method's recipe)"),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warm-up steps before the cosine. (default: the method's recipe)"),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the gradient norm to this value. (default: off)"),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (last.ckpt is refreshed with each). (default: 1000)"),
    keep_checkpoints: Optional[int] = typer.Option(None, help="Periodic checkpoints kept besides last.ckpt: the K newest; -1 keeps all. (default: 2)"),
    max_nonfinite: Optional[int] = typer.Option(None, help="Stop after this many non-finite losses in a row (each one skips its step). (default: 10)"),
    log_every: Optional[int] = typer.Option(None, help="Log scalars every n steps. (default: 10)"),
    seed: Optional[int] = typer.Option(None, help="Seed of every random draw (crops, views, init). (default: 0)"),
    resume: Optional[bool] = typer.Option(None, "--resume/--no-resume", help="Continue the run in --out exactly from checkpoints/last.ckpt."),
    progress_bar: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on a terminal; off, or in a log file: a plain line every logging.line_every_steps steps or line_every_s seconds. (default: on)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run a few steps on one device, print the cost and a projection of the whole run, write nothing to --out."),
    probe: Optional[Path] = typer.Option(None, help="Labelled dataset.json: frozen voxel probe + patch kNN of the encoder at step 0, every --probe-every steps and at the end, logged to TensorBoard and RUN/logs/probes.csv. Sizes: --set probe.train_cases=2 --set probe.fit_steps=100 (also probe.test_cases, probe.voxels_per_class, probe.patch, probe.size, probe.features=decoder). (default: off)"),
    probe_every: Optional[int] = typer.Option(None, help="Optimiser steps between probes. (default: 500)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Any config key, dotted: --set s2dc.tau_ot=0.05 --set backbone.feature_size=24 (repeatable)."),
) -> None:
    """Pre-train an encoder with S²DC, GVSL or both, on CPU or many GPUs, resumable after any crash.

    Options come from built-in defaults, then --config YAML, then flags, then --set. The resolved
    config is saved as OUT/config.yaml; `mssl pretrain --out OUT --resume` continues a run with it.

    Example: mssl pretrain --method s2dc --data cache/ --out runs/s2dc --devices 8 --strategy ddp --precision bf16-mixed
    """
    from mssl.config import ConfigError, parse_assignment
    from mssl.data.errors import DataError
    from mssl.train.checkpoint import NonFiniteStateError
    from mssl.train.module import NonFiniteLossError
    from mssl.train.pretrain import pretrain

    flags = {
        "method": method, "data": data, "split": split, "out": out, "backbone": backbone, "roi": roi, "steps": steps,
        "batch_size": batch_size, "accumulate": accumulate, "workers": workers, "accelerator": accelerator,
        "devices": _devices(devices), "num_nodes": num_nodes, "strategy": strategy, "precision": precision,
        "compile": compile_, "checkpoint_activations": checkpoint_activations,
        "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "warmup_steps": warmup_steps,
        "grad_clip": grad_clip, "checkpoint_every": checkpoint_every, "keep_checkpoints": keep_checkpoints, "max_nonfinite": max_nonfinite, "log_every": log_every, "seed": seed,
        "resume": resume, "progress_bar": progress_bar, "probe": probe, "probe_every": probe_every,
    }
    flags = {key: value for key, value in flags.items() if value is not None}
    try:
        dotted = dict(parse_assignment(item) for item in set_ or [])
        pretrain(config, dry_run=dry_run, **flags, **dotted)
    except (ConfigError, DataError) as error:
        fail(error)
    except (NonFiniteLossError, NonFiniteStateError) as error:
        fail(error, exit_code=1)
    except OSError as error:  # the run folder cannot be written (read-only, permissions, disk full)
        fail_environment(error, out)


def _devices(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    if value.isdigit():
        return int(value)
    raise typer.BadParameter(f"expected a number or 'auto', got {value!r}", param_hint="--devices")
