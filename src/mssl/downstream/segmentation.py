"""Segmentation fine-tuning with nnU-Net's proven choices, on Lightning Fabric.

Patches as large as the data and a memory budget allow, a third of them centred on a labelled organ,
on-the-fly augmentation, SGD with Nesterov momentum 0.99 and poly decay, partial-label DiceCE, sliding-
window validation every ``val_every`` steps (best checkpoint kept, ``steps="auto"`` stops on a plateau),
then keep-largest-component post-processing chosen per class on the validation cases.

A plain loop on Fabric rather than a ``Trainer``: the steps are short (partial-label loss, whole-volume
validation), and Fabric still gives precision, devices and DDP for free.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.transforms import Compose
from rich.console import Console
from safetensors.torch import load_file
from torch.utils.data import RandomSampler
from torch.utils.tensorboard import SummaryWriter

from mssl.downstream.augmentation import default_mirror_axes, training_augmentation
from mssl.downstream.config import FinetuneConfig
from mssl.downstream.convergence import on_plateau
from mssl.downstream.datasets import data_channels, labelled_subset, preprocessed_item, preprocessing
from mssl.downstream.inference import predict_log_probs
from mssl.downstream.last_checkpoint import load_last, open_log, save_last, skip_draws
from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.networks import build_segmentation_network, deep_supervision_levels, freeze_encoder, initialise_class_prior
from mssl.downstream.optim import build_optimizer
from mssl.downstream.deep_supervision import deep_supervised_loss
from mssl.downstream.partial_labels import PartialDiceCELoss, contoured_classes, restrict_to
from mssl.downstream.postprocess import choose_postprocessing, selected_classes
from mssl.downstream.pretrained import load_encoder
from mssl.downstream.progress import finetune_reporter, planned_validations
from mssl.downstream.run_files import save_weights, write_json
from mssl.downstream.sampling import automatic_roi, patch_sampler
from mssl.downstream.setup import check_roi, start_finetune
from mssl.config import backbone_stride
from mssl.runs import FinetuneRun
from mssl.train.cost import Projection
from mssl.train.schedules import poly
from mssl.viz.curves import plot_finetune_curve



def predict_labels(
    network: torch.nn.Module, items: Sequence[dict[str, Any]], roi: Sequence[int], overlap: float, allowed: torch.Tensor
) -> list[torch.Tensor]:
    """Label maps (*S) of preprocessed items, sliding window, among the ``allowed`` classes only."""
    device = next(network.parameters()).device
    maps = []
    for item in items:
        log_probs = predict_log_probs(network, item["image"].unsqueeze(0).to(device), roi, overlap)
        maps.append(restrict_to(log_probs, allowed).argmax(1)[0].cpu())
    return maps


def dice_table(predictions: Sequence[torch.Tensor], items: Sequence[dict[str, Any]], num_classes: int) -> np.ndarray:
    """(cases, C - 1) Dice per case and foreground class; NaN where the case does not contour the class."""
    return np.stack(
        [
            segmentation_metrics(p, item["label"][0], num_classes, (1.0, 1.0, 1.0), item["present"], with_hd95=False).dice
            for p, item in zip(predictions, items)
        ]
    )


def mean_dice(table: np.ndarray) -> float:
    """Mean over cases of each case's mean Dice over its evaluable classes."""
    per_case = [float(np.nanmean(row)) for row in table if np.isfinite(row).any()]
    return float(np.mean(per_case)) if per_case else float("nan")


def class_voxel_counts(items: Sequence[dict[str, Any]], num_classes: int) -> torch.Tensor:
    """(C,) voxels per class over the labelled cases (unlabelled organs count as background, as the loss sees them)."""
    return sum(torch.bincount(item["label"].as_tensor().long().flatten(), minlength=num_classes) for item in items)


def class_means(table: np.ndarray) -> np.ndarray:
    """(C - 1,) mean Dice per class over the cases that contour it; NaN for a class no case contours."""
    finite = np.isfinite(table)
    sums = np.where(finite, table, 0.0).sum(0)
    counts = finite.sum(0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def finetune_segmentation(config: FinetuneConfig, console: Console | None = None) -> Path | Projection:
    """Train, validate every ``val_every`` steps, keep the best, choose post-processing; returns the run folder
    (a dry run: the projection of the planned run)."""
    console = console or Console()
    start, cpu_start = time.perf_counter(), time.process_time()
    setup, fabric, out = start_finetune(config)
    files = FinetuneRun(out)
    dataset = setup.dataset
    class_names = dataset.class_names

    train_cases = labelled_subset(dataset.splits["train"], config.labels, config.seed)
    val_cases = sorted(dataset.splits["validation"], key=lambda c: c.case_id)[: config.val_cases]
    preprocess = preprocessing(setup.preset, with_label=True, num_classes=dataset.num_classes)
    train_items = [preprocessed_item(preprocess, c, class_names, with_label=True) for c in train_cases]
    val_items = [preprocessed_item(preprocess, c, class_names, with_label=True) for c in val_cases]
    setup.match_channels(data_channels(train_items + val_items, dataset.path))
    stride = backbone_stride(setup.backbone)
    roi = config.roi or automatic_roi([item["image"].shape[1:] for item in train_items], stride, config.max_roi_voxels)
    check_roi(roi, setup.backbone)
    mirror_axes = config.mirror_axes if config.mirror_axes is not None else default_mirror_axes(class_names)
    total_steps = config.max_steps if config.steps == "auto" else config.steps
    console.print(
        f"[bold]finetune seg[/] {setup.backbone.name} · {len(train_cases)} labelled cases (seed {config.seed}) · "
        f"{len(val_cases)} validation · preset {setup.preset.name} · spacing {setup.preset.spacing or 'native'} · "
        f"patch {roi} · {config.optimizer} lr {config.lr} · steps {config.steps}"
        + (f" (≤ {total_steps})" if config.steps == "auto" else "")
        + f" · mirror axes {list(mirror_axes)}"
    )

    deep_supervision = deep_supervision_levels(setup.backbone, config.deep_supervision)
    network = build_segmentation_network(setup.backbone, dataset.num_classes, deep_supervision)
    initialise_class_prior(network, class_voxel_counts(train_items, dataset.num_classes))
    if config.weights is not None:
        load_encoder(network, config.weights, console)
    if config.freeze_encoder:
        console.print(f"encoder frozen ({freeze_encoder(network, setup.backbone)} tensors)")
    optimizer = build_optimizer([p for p in network.parameters() if p.requires_grad], config)
    schedule = poly(optimizer, total_steps)
    network, optimizer = fabric.setup(network, optimizer)
    loop = load_last(out, network, optimizer, schedule) if config.resume else {"step": 0, "best": -1.0, "best_step": 0, "history": []}
    reporter = finetune_reporter(
        config, network, roi, config.batch_size * config.crops_per_case, total_steps, fabric.device, console, validating=bool(val_items)
    )

    augmentation = [training_augmentation(mirror_axes, config.elastic)] if config.augment else []
    transform = Compose([patch_sampler(roi, dataset.num_classes, config.foreground_fraction, config.crops_per_case), *augmentation])
    transform.set_random_state(seed=config.seed + loop["step"])
    train_data = CacheDataset(train_items, transform=transform, progress=False)
    # cases drawn with replacement, so every step holds batch_size cases even when k < batch_size
    sampler = RandomSampler(
        train_data, replacement=True, num_samples=total_steps * config.batch_size, generator=torch.Generator().manual_seed(config.seed)
    )
    loader = fabric.setup_dataloaders(
        DataLoader(
            train_data, batch_size=config.batch_size, sampler=skip_draws(sampler, loop["step"] * config.batch_size),
            num_workers=config.num_workers, collate_fn=list_data_collate,
        ),
        use_distributed_sampler=False,
    )
    trained_classes = contoured_classes([item["present"] for item in train_items])
    if not trained_classes.all():
        skipped = [n for n, t in zip(class_names, trained_classes.tolist()) if not t]
        console.print(f"[yellow]no labelled case contours {skipped}: the network will not predict them[/]")

    loss_fn = PartialDiceCELoss(batch_dice=config.batch_dice)
    history: list[float] = loop["history"]
    best_dice, best_step, step = loop["best"], loop["best_step"], loop["step"]
    writer = SummaryWriter(str(files.tensorboard)) if fabric.is_global_zero else None
    header = ["step", "loss", "lr", "val_dice", *(f"val_{n}" for n in class_names[1:]), "seconds"]
    log_file, log = open_log(files.metrics, header, step if config.resume else None)

    def validate(step: int) -> tuple[float, np.ndarray]:
        """Validation Dice (mean, per class), the best weights kept, TensorBoard; step 0 = the initial network."""
        nonlocal best_dice, best_step
        with fabric.autocast():
            table = dice_table(predict_labels(network, val_items, roi, config.sw_overlap, trained_classes), val_items, dataset.num_classes)
        val_dice, per_class = mean_dice(table), class_means(table)
        history.append(val_dice)
        if step and val_dice >= best_dice:  # ties go to the later, longer-trained weights
            best_dice, best_step = val_dice, step
            if fabric.is_global_zero:
                save_weights(network, out)
        best = f" (best {best_dice:.4f} @ {best_step})" if step else " (the initial network)"
        console.print(f"step {step}/{total_steps} · val Dice {val_dice:.4f}{best} · {time.perf_counter() - start:.0f} s")
        if writer is not None:
            writer.add_scalar("val/dice", val_dice, step)
            for name, value in zip(class_names[1:], per_class):
                if np.isfinite(value):
                    writer.add_scalar(f"val/dice_{name}", value, step)
        return val_dice, per_class

    reporter.start(step)
    if val_items and not step:
        with reporter.paused():
            val_dice, per_class = validate(0)
        log.writerow([0, "", "", f"{val_dice:.6f}", *(f"{v:.6f}" for v in per_class), f"{time.perf_counter() - start:.1f}"])
    with log_file:
        for step, batch in enumerate(loader, start=step + 1):
            network.train()
            loss = deep_supervised_loss(loss_fn, network(batch["image"]), batch["label"], batch["present"])
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)  # nnU-Net's clip; SGD at momentum 0.99 needs it early
            optimizer.step()
            schedule.step()
            lr = schedule.get_last_lr()[0]
            val_dice, per_class = float("nan"), np.full(dataset.num_classes - 1, np.nan)
            validating = bool(val_items) and (step % config.val_every == 0 or step == total_steps)
            if validating:
                with reporter.paused():
                    val_dice, per_class = validate(step)
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", lr, step)
            log.writerow([step, f"{loss.item():.6f}", f"{lr:.3e}", f"{val_dice:.6f}", *(f"{v:.6f}" for v in per_class), f"{time.perf_counter() - start:.1f}"])
            log_file.flush()
            if fabric.is_global_zero and (step % config.val_every == 0 or step == total_steps):
                save_last(out, network, optimizer, schedule, {"step": step, "best": best_dice, "best_step": best_step, "history": history})
            reporter.step_done(step, lambda: {"loss": loss.item(), "lr": lr})
            if config.dry_run and reporter.measured:
                break
            if config.steps == "auto" and validating and on_plateau(history, config.plateau_window, config.plateau_delta):
                console.print(f"validation Dice on a plateau (no gain > {config.plateau_delta} in {config.plateau_window} validations): stopping")
                break
    if writer is not None:
        writer.close()
    if config.dry_run:
        return reporter.dry_run_report(planned_validations(reporter, initial=bool(val_items)))
    if not val_items:  # no validation split: the last weights are the result
        best_step = step
        if fabric.is_global_zero:
            save_weights(network, out)

    postprocessing = {"classes": [], "validation": {}}
    if config.postprocess and val_items:
        network.load_state_dict(load_file(str(files.weights)))
        with fabric.autocast():
            predictions = predict_labels(network, val_items, roi, config.sw_overlap, trained_classes)
        decisions = choose_postprocessing(
            predictions, lambda p, i: dice_table([p], [val_items[i]], dataset.num_classes)[0], [c for c in range(1, dataset.num_classes) if trained_classes[c]]
        )
        postprocessing = {
            "classes": [class_names[c] for c in selected_classes(decisions)],
            "validation": {class_names[c]: {"dice": without, "dice_largest_component": with_} for c, (without, with_) in decisions.items()},
        }
        console.print(f"keep-largest-component for {postprocessing['classes'] or 'no class'} (validation Dice per class decided it)")

    description = {
        "task": "seg",
        "backbone": setup.backbone.model_dump(mode="json"),
        "num_classes": dataset.num_classes,
        "class_names": class_names,
        "preset": setup.preset.model_dump(mode="json"),
        "roi": list(roi),
        "deep_supervision": deep_supervision,
        "mirror_axes": list(mirror_axes),
        "postprocessing": postprocessing,
        "weights": str(config.weights) if config.weights else None,
        "method": setup.pretrained.method if setup.pretrained else "scratch",
        "labelled_cases": [c.case_id for c in train_cases],
        "trained_classes": trained_classes.tolist(),
        "validation_cases": [c.case_id for c in val_cases],
        "config": config.model_dump(mode="json"),
    }
    result = {
        "best_step": best_step,
        "best_val_dice": best_dice if val_items else None,
        "steps": step,
        "planned_steps": total_steps,
        "stopped_on_plateau": config.steps == "auto" and step < total_steps,
        "converged": on_plateau(history, config.plateau_window, config.plateau_delta),
        "validation_history": history,
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    if fabric.is_global_zero:
        write_json(files.model, description)
        write_json(files.result, result)
        plot_finetune_curve(files.metrics, files.curve, title=f"{description['method']} · k={len(train_cases)} · seed {config.seed}")
    console.print(
        f"[green]done[/] {out} · best validation Dice {best_dice:.4f} at step {best_step} · "
        f"{'converged' if result['converged'] else 'not converged (still rising)'} · {result['cpu_seconds'] / 60:.1f} CPU-min"
    )
    return out
