"""Classification / regression fine-tuning on pooled encoder features (e.g. IXI sex, age).

A datalist key with string values (``sex``: "F"/"M") becomes classes in sorted order; numeric values
(``age``) a regression standardised by the training cases' mean and std. Whole volumes are padded or
cropped to ``roi``; the best validation checkpoint (AUC/accuracy, or MAE) is kept. The training loop
(metrics.csv, TensorBoard, last.ckpt and ``--resume``) is :mod:`mssl.downstream.fit`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader
from rich.console import Console
from sklearn.metrics import accuracy_score, roc_auc_score
from torch.nn import functional as F

from mssl.data.preprocess import PresetConfig
from mssl.data.sources import Case
from mssl.config import backbone_stride
from mssl.downstream.config import FinetuneConfig
from mssl.downstream.datasets import case_dict, data_channels, labelled_subset, preprocessing
from mssl.downstream.fit import FinetuneLoop, Task, Validation
from mssl.models.task_networks import build_classifier, freeze_encoder
from mssl.downstream.pretrained import load_encoder
from mssl.downstream.sampling import automatic_roi
from mssl.downstream.setup import check_roi
from mssl.train.cost import Projection


def target_encoding(train_cases: Sequence[Case], every_case: Sequence[Case], key: str) -> dict[str, Any]:
    """How ``key`` is predicted: {"kind": "classes", "classes": [...]} or {"kind": "regression", "mean", "std"}.

    Classes come from every case (k labelled cases may all share one); regression statistics from the
    training cases only.
    """
    missing = [c.case_id for c in every_case if c.extra.get(key) is None]
    if missing:
        raise ValueError(f"cases {missing[:5]} have no '{key}' in the datalist")
    values = [c.extra[key] for c in every_case]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        array = np.asarray([c.extra[key] for c in train_cases], dtype=float)
        return {"kind": "regression", "mean": float(array.mean()), "std": float(array.std() or 1.0)}
    return {"kind": "classes", "classes": sorted({str(v) for v in values})}


def encode_target(value: Any, encoding: dict[str, Any]) -> float:
    if encoding["kind"] == "regression":
        return (float(value) - encoding["mean"]) / encoding["std"]
    return float(encoding["classes"].index(str(value)))


def classification_scores(outputs: torch.Tensor, targets: torch.Tensor, encoding: dict[str, Any]) -> dict[str, float]:
    """Accuracy and (binary or one-vs-rest) AUC for classes; MAE in the target's unit for regression."""
    if encoding["kind"] == "regression":
        predicted = outputs[:, 0] * encoding["std"] + encoding["mean"]
        truth = targets * encoding["std"] + encoding["mean"]
        return {"mae": float((predicted - truth).abs().mean())}
    probabilities = outputs.float().softmax(1).numpy()
    truth = targets.long().numpy()
    scores = {"accuracy": float(accuracy_score(truth, probabilities.argmax(1)))}
    if len(np.unique(truth)) == probabilities.shape[1]:
        scores["auc"] = float(
            roc_auc_score(truth, probabilities[:, 1]) if probabilities.shape[1] == 2 else roc_auc_score(truth, probabilities, multi_class="ovr")
        )
    return scores


def selection_score(scores: dict[str, float]) -> float:
    """Higher is better: AUC, else accuracy, else −MAE."""
    if "mae" in scores:
        return -scores["mae"]
    return scores.get("auc", scores["accuracy"])


def volume_transforms(preset: PresetConfig, roi: Sequence[int]) -> mt.Compose:
    """Whole-volume preprocessing to a fixed roi (pad or centre crop)."""
    return mt.Compose([preprocessing(preset, with_label=False), mt.ResizeWithPadOrCropd("image", spatial_size=tuple(roi))])


def classification_items(cases: Sequence[Case], target: str, encoding: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**case_dict(c, [], with_label=False), "target": encode_target(c.extra[target], encoding)} for c in cases]


@torch.no_grad()
def predict_outputs(network: torch.nn.Module, data: CacheDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Network outputs (N, num_outputs) and encoded targets (N,) over a dataset, one volume at a time."""
    network.eval()
    device = next(network.parameters()).device
    outputs, targets = [], []
    for item in data:
        outputs.append(network(item["image"].unsqueeze(0).to(device)).float().cpu())
        targets.append(torch.tensor([item["target"]], dtype=torch.float32))
    return torch.cat(outputs), torch.cat(targets)


def _loss(outputs: torch.Tensor, targets: torch.Tensor, encoding: dict[str, Any]) -> torch.Tensor:
    if encoding["kind"] == "regression":
        return F.smooth_l1_loss(outputs[:, 0].float(), targets.float())
    return F.cross_entropy(outputs.float(), targets.long())


def _endless(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches of one epoch after another (each epoch reshuffled)."""
    while True:
        yield from loader


def finetune_classification(config: FinetuneConfig, console: Console | None = None) -> Path | Projection:
    """Train a pooled-encoder classifier/regressor on k labelled cases; returns the run folder (a dry
    run: the projection of the planned run)."""
    if config.steps == "auto":
        raise ValueError("steps='auto' stops on a validation Dice plateau: segmentation only; give cls a number of steps")
    console = console or Console()
    loop = FinetuneLoop(config, console)
    setup, fabric = loop.setup, loop.fabric
    splits = setup.dataset.splits
    train_cases = labelled_subset(splits["train"], config.labels, config.seed)
    val_cases = sorted(splits["validation"], key=lambda c: c.case_id)[: config.val_cases]
    encoding = target_encoding(train_cases, [c for cases in splits.values() for c in cases], config.target)
    num_outputs = 1 if encoding["kind"] == "regression" else len(encoding["classes"])
    console.print(
        f"[bold]finetune cls[/] '{config.target}' ({encoding['kind']}) · {setup.backbone.name} · "
        f"{len(train_cases)} labelled cases (seed {config.seed}) · {len(val_cases)} validation"
    )

    preprocess = preprocessing(setup.preset, with_label=False)
    train_items = [preprocess(item) for item in classification_items(train_cases, config.target, encoding)]
    val_items = [preprocess(item) for item in classification_items(val_cases, config.target, encoding)]
    setup.match_channels(data_channels(train_items + val_items, setup.dataset.path))
    network = build_classifier(setup.backbone, num_outputs)
    if config.weights is not None:
        load_encoder(network.backbone, config.weights, console)
    if config.freeze_encoder:
        console.print(f"encoder frozen ({freeze_encoder(network, setup.backbone)} tensors)")

    roi = config.roi or automatic_roi([item["image"].shape[1:] for item in train_items], backbone_stride(setup.backbone), config.max_roi_voxels)
    check_roi(roi, setup.backbone, decode=False)
    to_roi = mt.ResizeWithPadOrCropd("image", spatial_size=tuple(roi))
    train_data = CacheDataset(train_items, transform=to_roi, progress=False)
    val_data = CacheDataset(val_items, transform=to_roi, progress=False)
    loader = fabric.setup_dataloaders(DataLoader(train_data, batch_size=config.batch_size, shuffle=True, num_workers=config.num_workers))
    # resuming restores weights, optimiser, schedule, counters and RNG, after MONAI's DataLoader has reseeded
    # torch's generator; the epoch order then starts afresh
    network = loop.prepare(network)

    def validate() -> Validation:
        scores = classification_scores(*predict_outputs(network, val_data), encoding)
        return Validation(score=selection_score(scores), scores=scores, cells=[str(scores)], summary=f"validation {scores}")

    task = Task(
        loss=lambda outputs, batch: _loss(outputs, batch["target"], encoding),
        validate=validate if val_cases else None,
        validation_columns=["validation"],
    )
    projection = loop.fit(task, _endless(loader), roi, config.batch_size)
    if projection is not None:
        return projection
    description = {
        "num_outputs": num_outputs,
        "target": config.target,
        "encoding": encoding,
        "roi": list(roi),
        "labelled_cases": [c.case_id for c in train_cases],
    }
    return loop.finish(description, {})
