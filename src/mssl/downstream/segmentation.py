"""Segmentation fine-tuning: DiceCE with partial labels, foreground-oversampled crops, best checkpoint.

A plain loop on Lightning Fabric rather than a ``Trainer``: the steps are short (partial-label loss,
sliding-window validation on whole volumes), and Fabric still gives precision, devices and DDP for free.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, list_data_collate
from monai.transforms import Compose
from rich.console import Console

from mssl.downstream.config import FinetuneConfig
from mssl.downstream.datasets import (
    case_dict,
    labelled_subset,
    preprocessing,
    segmentation_training_transforms,
)
from mssl.downstream.inference import predict_logits
from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.networks import build_segmentation_network, freeze_encoder
from mssl.downstream.partial_labels import PartialDiceCELoss, contoured_classes, restrict_to
from mssl.downstream.pretrained import load_encoder
from mssl.downstream.run_files import MODEL_FILE, RESULT_FILE, save_weights, write_json
from mssl.downstream.setup import start_finetune

LOG_FILE = "metrics.csv"


def _forever(loader: DataLoader) -> Iterator[dict[str, Any]]:
    while True:
        yield from loader


def validation_dice(
    network: torch.nn.Module, cases: list[dict[str, Any]], roi: tuple[int, ...], overlap: float, num_classes: int, allowed: torch.Tensor
) -> float:
    """Mean over cases of the mean Dice over their contoured foreground classes (sliding window)."""
    device = next(network.parameters()).device
    scores = []
    for item in cases:
        logits = predict_logits(network, item["image"].unsqueeze(0).to(device), roi, overlap)
        prediction = restrict_to(logits, allowed).argmax(1)[0].cpu()
        dice = segmentation_metrics(prediction, item["label"][0], num_classes, (1.0, 1.0, 1.0), item["present"], with_hd95=False).dice
        if np.isfinite(dice).any():
            scores.append(float(np.nanmean(dice)))
    return float(np.mean(scores)) if scores else float("nan")


def finetune_segmentation(config: FinetuneConfig, console: Console | None = None) -> Path:
    """Train, validate every ``val_every`` steps, keep the best; returns the run folder."""
    console = console or Console()
    start = time.perf_counter()
    setup, fabric, out = start_finetune(config)
    dataset = setup.dataset

    train_cases = labelled_subset(dataset.splits["train"], config.labels, config.seed)
    val_cases = sorted(dataset.splits["validation"], key=lambda c: c.case_id)[: config.val_cases]
    console.print(
        f"[bold]finetune seg[/] {setup.backbone.name} · {len(train_cases)} labelled cases (seed {config.seed}) · "
        f"{len(val_cases)} validation · preset {setup.preset.name} · spacing {setup.preset.spacing or 'native'}"
    )

    network = build_segmentation_network(setup.backbone, dataset.num_classes)
    if config.weights is not None:
        load_encoder(network, config.weights, console)
    if config.freeze_encoder:
        frozen = freeze_encoder(network, setup.backbone)
        console.print(f"encoder frozen ({frozen} tensors)")
    trainable = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps)))
    network, optimizer = fabric.setup(network, optimizer)

    preprocess = preprocessing(setup.preset, with_label=True)
    train_data = CacheDataset(
        [case_dict(c, dataset.class_names, with_label=True) for c in train_cases],
        transform=Compose([preprocess, segmentation_training_transforms(config.roi, config.crops_per_case, config.positive_fraction)]),
        progress=False,
    )
    loader = fabric.setup_dataloaders(
        DataLoader(train_data, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers, collate_fn=list_data_collate)
    )
    val_data = CacheDataset([case_dict(c, dataset.class_names, with_label=True) for c in val_cases], transform=preprocess, progress=False)
    trained_classes = contoured_classes([case_dict(c, dataset.class_names, with_label=True)["present"] for c in train_cases])
    if not trained_classes.all():
        skipped = [n for n, t in zip(dataset.class_names, trained_classes.tolist()) if not t]
        console.print(f"[yellow]no labelled case contours {skipped}: the network will not predict them[/]")

    loss_fn = PartialDiceCELoss()
    best_dice, best_step = -1.0, 0
    batches = _forever(loader)
    with open(out / LOG_FILE, "w", newline="", encoding="utf-8") as log_file:
        log = csv.writer(log_file)
        log.writerow(["step", "loss", "lr", "val_dice"])
        for step in range(1, config.steps + 1):
            network.train()
            batch = next(batches)
            logits = network(batch["image"])
            loss = loss_fn(logits, batch["label"], batch["present"])
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            schedule.step()
            val_dice = float("nan")
            if val_cases and (step % config.val_every == 0 or step == config.steps):
                with fabric.autocast():
                    val_dice = validation_dice(network, list(val_data), config.roi, config.sw_overlap, dataset.num_classes, trained_classes)
                if val_dice >= best_dice:  # ties go to the later, longer-trained weights
                    best_dice, best_step = val_dice, step
                    if fabric.is_global_zero:
                        save_weights(network, out)
                console.print(f"step {step}/{config.steps} · loss {loss.item():.4f} · val Dice {val_dice:.4f} (best {best_dice:.4f} @ {best_step})")
            log.writerow([step, f"{loss.item():.6f}", f"{schedule.get_last_lr()[0]:.3e}", f"{val_dice:.6f}"])
            log_file.flush()
    if not val_cases:  # no validation split: the last weights are the result
        best_step = config.steps
        if fabric.is_global_zero:
            save_weights(network, out)

    description = {
        "task": "seg",
        "backbone": setup.backbone.model_dump(mode="json"),
        "num_classes": dataset.num_classes,
        "class_names": dataset.class_names,
        "preset": setup.preset.model_dump(mode="json"),
        "roi": list(config.roi),
        "weights": str(config.weights) if config.weights else None,
        "method": setup.pretrained.method if setup.pretrained else "scratch",
        "labelled_cases": [c.case_id for c in train_cases],
        "trained_classes": trained_classes.tolist(),
        "validation_cases": [c.case_id for c in val_cases],
        "config": config.model_dump(mode="json"),
    }
    if fabric.is_global_zero:
        write_json(out / MODEL_FILE, description)
        write_json(out / RESULT_FILE, {"best_step": best_step, "best_val_dice": best_dice if val_cases else None, "steps": config.steps, "seconds": round(time.perf_counter() - start, 1)})
    console.print(f"[green]done[/] {out} · best validation Dice {best_dice:.4f} at step {best_step}")
    return out
