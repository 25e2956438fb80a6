"""Segmentation fine-tuning with nnU-Net's proven choices, on Lightning Fabric.

Patches as large as the data and a memory budget allow, a third of them centred on a labelled organ,
on-the-fly augmentation, SGD with Nesterov momentum 0.99 and poly decay, partial-label DiceCE, sliding-
window validation every ``val_every`` steps (best checkpoint kept, ``steps="auto"`` stops on a plateau),
then keep-largest-component post-processing chosen per class on the validation cases. The training loop
itself is :mod:`mssl.downstream.fit`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import CacheDataset
from monai.transforms import Compose
from rich.console import Console
from safetensors.torch import load_file

from mssl.config import backbone_stride
from mssl.downstream.augmentation import HEADER_LEFT_RIGHT_AXIS, default_mirror_axes, left_right_axis, training_augmentation
from mssl.downstream.config import FinetuneConfig
from mssl.downstream.datasets import data_channels, labelled_subset, preprocessed_item, preprocessing
from mssl.downstream.deep_supervision import deep_supervised_loss
from mssl.downstream.fit import FinetuneLoop, Task, Validation
from mssl.downstream.inference import predict_log_probs
from mssl.downstream.metrics import segmentation_metrics
from mssl.models.task_networks import build_segmentation_network, deep_supervision_levels, freeze_encoder, initialise_class_prior
from mssl.downstream.partial_labels import PartialDiceCELoss, contoured_classes, restrict_to
from mssl.downstream.postprocess import choose_postprocessing, selected_classes
from mssl.downstream.pretrained import load_encoder
from mssl.downstream.sampling import automatic_roi, patch_sampler, training_loader
from mssl.downstream.setup import check_roi
from mssl.train.cost import Projection
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


def dice_table(
    predictions: Sequence[torch.Tensor], items: Sequence[dict[str, Any]], num_classes: int, trained: torch.Tensor | None = None
) -> np.ndarray:
    """(cases, C - 1) Dice per case and foreground class; NaN where the case does not contour the class, and
    for classes outside ``trained`` (C,) bool: the network is never asked to predict those, so their Dice of
    0 would only dilute the validation score."""
    table = np.stack(
        [
            segmentation_metrics(p, item["label"][0], num_classes, (1.0, 1.0, 1.0), item["present"], with_hd95=False).dice
            for p, item in zip(predictions, items)
        ]
    )
    if trained is not None:
        table[:, ~trained[1:].numpy()] = np.nan
    return table


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
    loop = FinetuneLoop(config, console)
    setup, fabric = loop.setup, loop.fabric
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
    sided_axis = left_right_axis([item["label"][0] for item in train_items], class_names)
    if sided_axis is not None and sided_axis != HEADER_LEFT_RIGHT_AXIS:
        console.print(f"[yellow]left/right organs lie apart along array axis {sided_axis}, not {HEADER_LEFT_RIGHT_AXIS} as the image orientation says: axis {sided_axis} is not mirrored[/]")
    mirror_axes = config.mirror_axes if config.mirror_axes is not None else default_mirror_axes(class_names, sided_axis)
    console.print(
        f"[bold]finetune seg[/] {setup.backbone.name} · {len(train_cases)} labelled cases (seed {config.seed}) · "
        f"{len(val_cases)} validation · preset {setup.preset.name} · spacing {setup.preset.spacing or 'native'} · "
        f"patch {roi} · {config.optimizer} lr {config.lr} · steps {config.steps}"
        + (f" (≤ {loop.total_steps})" if config.steps == "auto" else "")
        + f" · mirror axes {list(mirror_axes)}"
    )

    deep_supervision = deep_supervision_levels(setup.backbone, config.deep_supervision)
    network = build_segmentation_network(setup.backbone, dataset.num_classes, deep_supervision)
    initialise_class_prior(network, class_voxel_counts(train_items, dataset.num_classes))
    if config.weights is not None:
        load_encoder(network, config.weights, console)
    if config.freeze_encoder:
        console.print(f"encoder frozen ({freeze_encoder(network, setup.backbone)} tensors)")
    network = loop.prepare(network)
    done_steps = loop.progress.step

    augmentation = [training_augmentation(mirror_axes, config.elastic)] if config.augment else []
    transform = Compose([patch_sampler(roi, dataset.num_classes, config.foreground_fraction, config.crops_per_case), *augmentation])
    train_data = CacheDataset(train_items, transform=transform, progress=False)
    loader = fabric.setup_dataloaders(
        training_loader(train_data, config.batch_size, loop.total_steps, done_steps, config.seed, fabric.global_rank, config.num_workers),
        use_distributed_sampler=False,  # each rank draws its own cases (training_loader)
    )
    trained_classes = contoured_classes([item["present"] for item in train_items])
    if not trained_classes.all():
        skipped = [n for n, t in zip(class_names, trained_classes.tolist()) if not t]
        console.print(f"[yellow]no labelled case contours {skipped}: the network will not predict them[/]")

    loss_fn = PartialDiceCELoss(batch_dice=config.batch_dice)

    def validate() -> Validation:
        table = dice_table(predict_labels(network, val_items, roi, config.sw_overlap, trained_classes), val_items, dataset.num_classes, trained_classes)
        val_dice, per_class = mean_dice(table), class_means(table)
        finite = {f"dice_{name}": float(value) for name, value in zip(class_names[1:], per_class) if np.isfinite(value)}
        return Validation(
            score=val_dice,
            scores={"dice": val_dice, **finite},
            cells=[f"{val_dice:.6f}", *(f"{v:.6f}" for v in per_class)],
            summary=f"val Dice {val_dice:.4f}",
        )

    task = Task(
        loss=lambda outputs, batch: deep_supervised_loss(loss_fn, outputs, batch["label"], batch["present"]),
        validate=validate if val_items else None,
        validation_columns=["val_dice", *(f"val_{n}" for n in class_names[1:])],
        clip_grad_norm=12.0,  # nnU-Net's clip; SGD at momentum 0.99 needs it early
        validate_initial=True,
        ties_to_later=True,
    )
    projection = loop.fit(task, loader, roi, config.batch_size * config.crops_per_case)
    if projection is not None:
        return projection

    postprocessing = {"classes": [], "validation": {}}
    if config.postprocess and val_items and loop.has_best_weights:
        network.load_state_dict(load_file(str(loop.files.weights)))
        with fabric.autocast():
            predictions = predict_labels(network, val_items, roi, config.sw_overlap, trained_classes)
        decisions = choose_postprocessing(
            predictions, lambda p, i: dice_table([p], [val_items[i]], dataset.num_classes)[0], [c for c in range(1, dataset.num_classes) if trained_classes[c]]
        )
        postprocessing = {
            "classes": [class_names[c] for c in selected_classes(decisions)],
            "validation": {
                class_names[c]: {"dice": d.without, "dice_largest_component": d.with_, "worst_case_change": d.worst_case_change}
                for c, d in decisions.items()
            },
        }
        console.print(f"keep-largest-component for {postprocessing['classes'] or 'no class'} (validation Dice per class decided it)")

    description = {
        "num_classes": dataset.num_classes,
        "class_names": class_names,
        "roi": list(roi),
        "deep_supervision": deep_supervision,
        "mirror_axes": list(mirror_axes),
        "left_right_axis": sided_axis,
        "postprocessing": postprocessing,
        "labelled_cases": [c.case_id for c in train_cases],
        "trained_classes": trained_classes.tolist(),
        "validation_cases": [c.case_id for c in val_cases],
    }
    if fabric.is_global_zero:
        plot_finetune_curve(loop.files.metrics, loop.files.curve, title=f"{loop.method} · k={len(train_cases)} · seed {config.seed}")
    return loop.finish(description, {"best_val_dice": loop.progress.scores.get("dice")})
