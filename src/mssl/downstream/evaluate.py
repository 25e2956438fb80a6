"""``mssl.evaluate``: a fine-tuned run scored on one split of a dataset.

Segmentation: sliding-window logits in the run's preprocessed space are mapped back to each input's own
grid with MONAI's ``Invertd`` (bilinear on logits, then argmax), so Dice and HD95 are measured against
the original label at the dataset's spacing and the saved NIfTI carries the input's affine. Classes a
case does not contour are NaN (excluded). Writes ``per_case.csv``, ``summary.md`` and ``summary.json``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from rich.console import Console
from rich.progress import track

from mssl.downstream.config import EvaluateConfig
from mssl.data.preprocess import PresetConfig
from mssl.data.sources import Case
from mssl.downstream.datasets import case_dict, load_dataset, preprocessing
from mssl.downstream.inference import predict_logits
from mssl.downstream.metrics import format_mean_std, mean_std, segmentation_metrics
from mssl.downstream.partial_labels import restrict_to
from mssl.downstream.run_files import load_finetuned, write_json

HD95_NOTE = "HD95 in mm; a contoured organ the prediction misses entirely counts as the volume diagonal."


@dataclass
class EvaluationResult:
    """Per-class summary ({class: {dice, dice_std, hd95, hd95_std, n}}) and the means over those classes."""

    out: Path
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # mean_dice, mean_hd95 (seg); accuracy/auc/mae (cls)


def _class_selection(class_names: list[str], classes: list[str] | None) -> list[int]:
    """Indices (≥ 1) of the foreground classes to report."""
    if classes is None:
        return list(range(1, len(class_names)))
    unknown = sorted(set(classes) - set(class_names[1:]))
    if unknown:
        raise ValueError(f"classes {unknown} are not in the dataset's labels {class_names[1:]}")
    return [class_names.index(c) for c in classes]


def predict_case(network: torch.nn.Module, case: Case, description: dict[str, Any], class_names: list[str], overlap: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Label map on the input's own grid (only classes the training contoured) and the preprocessed item."""
    allowed = torch.tensor(description["trained_classes"])
    preprocess = preprocessing(PresetConfig(**description["preset"]), with_label=True)
    item = preprocess(case_dict(case, class_names, with_label=True))
    device = next(network.parameters()).device
    logits = predict_logits(network, item["image"].unsqueeze(0).to(device), description["roi"], overlap)[0].cpu()
    logits = MetaTensor(logits, meta=item["image"].meta, applied_operations=item["image"].applied_operations)
    inverted = Invertd(keys="pred", transform=preprocess, orig_keys="image", nearest_interp=False)({"image": item["image"], "pred": logits})
    logits = restrict_to(torch.as_tensor(inverted["pred"]).unsqueeze(0), allowed)[0]
    return logits.argmax(0).numpy().astype(np.uint8), item


def evaluate_segmentation(network: torch.nn.Module, description: dict[str, Any], cases: list[Case], config: EvaluateConfig, out: Path, console: Console) -> EvaluationResult:
    class_names = description["class_names"]
    selected = _class_selection(class_names, config.classes)
    rows, dice_by_class, hd_by_class = [], {i: [] for i in selected}, {i: [] for i in selected}
    for case in track(cases, description=f"evaluate {len(cases)} cases", console=console):
        prediction, item = predict_case(network, case, description, class_names, config.sw_overlap)
        image_file, label_file = nib.load(str(case.image)), nib.load(str(case.label))
        label = np.asarray(label_file.dataobj).astype(np.int64)
        if label.shape != prediction.shape:
            raise ValueError(f"{case.label}: label shape {label.shape} differs from its image grid {prediction.shape}")
        spacing = [float(z) for z in image_file.header.get_zooms()[:3]]
        metrics = segmentation_metrics(torch.from_numpy(prediction), torch.from_numpy(label), len(class_names), spacing, item["present"])
        for i in selected:
            dice, hd95 = float(metrics.dice[i - 1]), float(metrics.hd95[i - 1])
            dice_by_class[i].append(dice)
            hd_by_class[i].append(hd95)
            rows.append({"case": case.case_id, "class": class_names[i], "dice": dice, "hd95": hd95})
        if config.save_predictions:
            predictions = out / "predictions"
            predictions.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(prediction, image_file.affine), str(predictions / f"{case.case_id}.nii.gz"))

    with open(out / "per_case.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "class", "dice", "hd95"])
        writer.writeheader()
        writer.writerows(rows)
    per_class = {}
    for i in selected:
        dice_mean, dice_std, n = mean_std(dice_by_class[i])
        hd_mean, hd_std, _ = mean_std(hd_by_class[i])
        per_class[class_names[i]] = {"dice": dice_mean, "dice_std": dice_std, "hd95": hd_mean, "hd95_std": hd_std, "n": n}
    measured = [v for v in per_class.values() if v["n"]]
    scores = {
        "mean_dice": float(np.mean([v["dice"] for v in measured])) if measured else float("nan"),
        "mean_hd95": float(np.mean([v["hd95"] for v in measured])) if measured else float("nan"),
    }
    lines = [
        f"# Evaluation of `{config.run}` on split `{config.split}` ({len(cases)} cases)",
        "",
        "| class | Dice | HD95 (mm) |",
        "|---|---|---|",
        *(f"| {class_names[i]} | {format_mean_std(dice_by_class[i])} | {format_mean_std(hd_by_class[i], 1)} |" for i in selected),
        f"| **mean over classes** | {scores['mean_dice']:.3f} | {scores['mean_hd95']:.1f} |",
        "",
        f"Mean ± sample std over the cases that contour the class (n). {HD95_NOTE}",
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "summary.json", {"per_class": per_class, "scores": scores, "cases": [c.case_id for c in cases]})
    return EvaluationResult(out, per_class, scores)


def evaluate_classification(network: torch.nn.Module, description: dict[str, Any], cases: list[Case], config: EvaluateConfig, out: Path) -> EvaluationResult:
    from monai.data import Dataset as MonaiDataset

    from mssl.downstream.classification import classification_items, classification_scores, predict_outputs, volume_transforms

    encoding = description["encoding"]
    data = MonaiDataset(classification_items(cases, description["target"], encoding), transform=volume_transforms(PresetConfig(**description["preset"]), description["roi"]))
    outputs, targets = predict_outputs(network, data)
    scores = classification_scores(outputs, targets, encoding)
    with open(out / "per_case.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if encoding["kind"] == "regression":
            writer.writerow(["case", description["target"], "prediction"])
            for case, o in zip(cases, outputs[:, 0].tolist()):
                writer.writerow([case.case_id, case.extra[description["target"]], o * encoding["std"] + encoding["mean"]])
        else:
            writer.writerow(["case", description["target"], "prediction", *(f"p_{c}" for c in encoding["classes"])])
            for case, p in zip(cases, outputs.softmax(1).tolist()):
                writer.writerow([case.case_id, case.extra[description["target"]], encoding["classes"][int(np.argmax(p))], *p])
    lines = [f"# Evaluation of `{config.run}` on split `{config.split}` ({len(cases)} cases)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {value:.4f} |" for name, value in scores.items()]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(out / "summary.json", {"scores": scores, "cases": [c.case_id for c in cases]})
    return EvaluationResult(out, {}, scores)


def evaluate(config: EvaluateConfig | None = None, console: Console | None = None, **overrides: Any) -> EvaluationResult:
    """Score a fine-tuned run on ``split`` (default test); ``mssl.evaluate(run=..., data=...)`` ≡ ``mssl evaluate RUN --data ...``."""
    config = EvaluateConfig(**{**(config.model_dump() if config else {}), **overrides})
    console = console or Console()
    network, description = load_finetuned(config.run)
    dataset = load_dataset(config.data, config.test_fraction, config.validation_fraction)
    if config.split not in dataset.splits:
        raise ValueError(f"split {config.split!r} unknown; expected one of {list(dataset.splits)}")
    cases = sorted(dataset.splits[config.split], key=lambda c: c.case_id)[: config.max_cases]
    if not cases:
        raise ValueError(f"{config.data}: split {config.split!r} has no cases")
    out = Path(config.out) if config.out else Path(config.run) / "evaluation" / config.split
    out.mkdir(parents=True, exist_ok=True)
    if description["task"] == "seg":
        if description["class_names"] != dataset.class_names:
            raise ValueError(f"{config.data}: labels {dataset.class_names} differ from the run's {description['class_names']}")
        result = evaluate_segmentation(network, description, cases, config, out, console)
    else:
        result = evaluate_classification(network, description, cases, config, out)
    console.print((out / "summary.md").read_text(encoding="utf-8"))
    return result
