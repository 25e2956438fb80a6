"""``mssl.evaluate``: a fine-tuned run scored on one split of a dataset.

Segmentation: sliding-window logits in the run's preprocessed space are mapped back to each input's own
grid with MONAI's ``Invertd`` (bilinear on class probabilities, then argmax), so Dice, HD95 and NSD are
measured against the original label at the dataset's spacing and the saved NIfTI carries the input's
affine. Test-time mirroring and keep-largest-component follow the run's ``model.json``. Classes a
case does not contour are NaN (excluded). Writes ``per_case.csv``, ``summary.md`` and ``summary.json``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from rich.console import Console
from rich.progress import track

from mssl.config import build_config

from mssl.downstream.config import EvaluateConfig
from mssl.data.preprocess import PresetConfig
from mssl.data.sources import Case
from mssl.downstream.datasets import load_dataset, preprocessed_item, preprocessing
from mssl.downstream.inference import predict_log_probs
from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.partial_labels import restrict_to
from mssl.downstream.postprocess import keep_largest_component
from mssl.downstream.run_files import load_finetuned, write_json
from mssl.runs import EvaluationFolder, FinetuneRun
from mssl.viz.tables import format_mean_std, mean_std
from mssl.weights.loading import input_channels_of

HD95_NOTE = "HD95 in mm; a contoured organ the prediction misses entirely counts as the volume diagonal (and NSD 0)."


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


def predict_case(
    network: torch.nn.Module, case: Case, description: dict[str, Any], class_names: list[str], overlap: float, mirror_axes: Sequence[int] = ()
) -> tuple[np.ndarray, dict[str, Any]]:
    """Label map on the input's own grid (only classes the training contoured) and the preprocessed item.

    The class probabilities (averaged over ``mirror_axes`` views) are inverted through the preprocessing
    (crop, spacing, orientation) before the argmax, so the map carries the input's geometry exactly.
    """
    allowed = torch.tensor(description["trained_classes"])
    preprocess = preprocessing(PresetConfig(**description["preset"]), with_label=True, num_classes=len(class_names))
    item = preprocessed_item(preprocess, case, class_names, with_label=True)
    channels, expected = int(item["image"].shape[0]), input_channels_of(network.state_dict())
    if expected is not None and channels != expected:
        raise ValueError(f"{case.image}: case {case.case_id} has {channels} channels but the run's network takes {expected}")
    device = next(network.parameters()).device
    log_probs = predict_log_probs(network, item["image"].unsqueeze(0).to(device), description["roi"], overlap, mirror_axes)[0].cpu()
    probabilities = MetaTensor(log_probs.exp(), meta=item["image"].meta, applied_operations=item["image"].applied_operations)
    inverted = Invertd(keys="pred", transform=preprocess, orig_keys="image", nearest_interp=False)({"image": item["image"], "pred": probabilities})
    # outside the cropped box nothing was predicted: padding gives probability 0 everywhere, i.e. background
    probabilities = torch.as_tensor(inverted["pred"]).unsqueeze(0).clamp_min(torch.finfo(torch.float32).tiny)
    return restrict_to(probabilities.log(), allowed)[0].argmax(0).numpy().astype(np.uint8), item


METRICS = ("dice", "hd95", "nsd")


def case_reference(case: Case, grid_shape: Sequence[int]) -> tuple[torch.Tensor, list[float], np.ndarray]:
    """A case's label map (int64) on its image grid, the image's spacing (mm) and affine; a label whose shape is
    not ``grid_shape`` (the prediction's, i.e. the image's) is an error naming the label file."""
    image_file, label_file = nib.load(str(case.image)), nib.load(str(case.label))
    label = torch.from_numpy(np.asarray(label_file.dataobj).astype(np.int64))
    if tuple(label.shape) != tuple(grid_shape):
        raise ValueError(f"{case.label}: label shape {tuple(label.shape)} differs from its image grid {tuple(grid_shape)}")
    return label, [float(z) for z in image_file.header.get_zooms()[:3]], image_file.affine


def evaluate_segmentation(network: torch.nn.Module, description: dict[str, Any], cases: list[Case], config: EvaluateConfig, out: Path, console: Console) -> EvaluationResult:
    """Per case and class: Dice, HD95 and NSD of the raw prediction and of the post-processed one (the
    run's keep-largest-component classes); the post-processed prediction is the result and is saved."""
    files = EvaluationFolder(out)
    class_names = description["class_names"]
    selected = _class_selection(class_names, config.classes)
    mirror_axes = description.get("mirror_axes", []) if config.tta else []
    postprocessed_classes = [class_names.index(n) for n in description.get("postprocessing", {}).get("classes", [])]
    rows: list[dict[str, Any]] = []
    values = {(variant, metric): {i: [] for i in selected} for variant in ("raw", "final") for metric in METRICS}
    for case in track(cases, description=f"evaluate {len(cases)} cases", console=console):
        raw, item = predict_case(network, case, description, class_names, config.sw_overlap, mirror_axes)
        final = keep_largest_component(torch.from_numpy(raw), postprocessed_classes).numpy().astype(np.uint8)
        label, spacing, affine = case_reference(case, raw.shape)
        for variant, prediction in (("raw", raw), ("final", final)):
            metrics = segmentation_metrics(
                torch.from_numpy(prediction), label, len(class_names), spacing, item["present"], nsd_tolerance_mm=config.nsd_tolerance_mm
            )
            for i in selected:
                row = {metric: float(getattr(metrics, metric)[i - 1]) for metric in METRICS}
                for metric in METRICS:
                    values[variant, metric][i].append(row[metric])
                rows.append({"case": case.case_id, "class": class_names[i], "postprocessed": variant == "final", **row})
        if config.save_predictions:
            predictions = files.predictions
            predictions.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(final, affine), str(predictions / f"{case.case_id}.nii.gz"))

    with open(files.per_case, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["case", "class", "postprocessed", *METRICS])
        writer.writeheader()
        writer.writerows(rows)

    def summarise(variant: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        per_class = {}
        for i in selected:
            entry: dict[str, float] = {}
            for metric in METRICS:
                mean, std, n = mean_std(values[variant, metric][i])
                entry.update({metric: mean, f"{metric}_std": std, "n": n})
            per_class[class_names[i]] = entry
        measured = [v for v in per_class.values() if v["n"]]
        scores = {f"mean_{m}": float(np.mean([v[m] for v in measured])) if measured else float("nan") for m in METRICS}
        return per_class, scores

    per_class, scores = summarise("final")
    per_class_raw, scores_raw = summarise("raw")
    pp = ", ".join(class_names[i] for i in postprocessed_classes) or "none"
    lines = [
        f"# Evaluation of `{config.run}` on split `{config.split}` ({len(cases)} cases)",
        "",
        f"Test-time mirroring over axes {list(mirror_axes) or 'none'}; keep-largest-component for: {pp} (chosen on validation).",
        "",
        f"| class | Dice | HD95 (mm) | NSD ({config.nsd_tolerance_mm:g} mm) | Dice without post-processing |",
        "|---|---|---|---|---|",
        *(
            f"| {class_names[i]} | {format_mean_std(values['final', 'dice'][i])} | {format_mean_std(values['final', 'hd95'][i], 1)} | "
            f"{format_mean_std(values['final', 'nsd'][i])} | {format_mean_std(values['raw', 'dice'][i])} |"
            for i in selected
        ),
        f"| **mean over classes** | {scores['mean_dice']:.3f} | {scores['mean_hd95']:.1f} | {scores['mean_nsd']:.3f} | {scores_raw['mean_dice']:.3f} |",
        "",
        f"Mean ± sample std over the cases that contour the class (n). {HD95_NOTE}",
    ]
    files.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(
        files.summary,
        {
            "per_class": per_class,
            "scores": scores,
            "per_class_without_postprocessing": per_class_raw,
            "scores_without_postprocessing": scores_raw,
            "mirror_axes": list(mirror_axes),
            "postprocessed_classes": [class_names[i] for i in postprocessed_classes],
            "cases": [c.case_id for c in cases],
        },
    )
    return EvaluationResult(out, per_class, scores)


def evaluate_classification(network: torch.nn.Module, description: dict[str, Any], cases: list[Case], config: EvaluateConfig, out: Path) -> EvaluationResult:
    from monai.data import Dataset as MonaiDataset

    from mssl.downstream.classification import classification_items, classification_scores, predict_outputs, volume_transforms

    files = EvaluationFolder(out)
    encoding = description["encoding"]
    data = MonaiDataset(classification_items(cases, description["target"], encoding), transform=volume_transforms(PresetConfig(**description["preset"]), description["roi"]))
    outputs, targets = predict_outputs(network, data)
    scores = classification_scores(outputs, targets, encoding)
    with open(files.per_case, "w", newline="", encoding="utf-8") as handle:
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
    files.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(files.summary, {"scores": scores, "cases": [c.case_id for c in cases]})
    return EvaluationResult(out, {}, scores)


def evaluate(config: EvaluateConfig | None = None, console: Console | None = None, **overrides: Any) -> EvaluationResult:
    """Score a fine-tuned run on ``split`` (default test); ``mssl.evaluate(run=..., data=...)`` ≡ ``mssl evaluate RUN --data ...``."""
    config = build_config(EvaluateConfig, config, **overrides)
    console = console or Console()
    network, description = load_finetuned(config.run)
    dataset = load_dataset(config.data, config.test_fraction, config.validation_fraction)
    if config.split not in dataset.splits:
        raise ValueError(f"split {config.split!r} unknown; expected one of {list(dataset.splits)}")
    cases = sorted(dataset.splits[config.split], key=lambda c: c.case_id)[: config.max_cases]
    if not cases:
        raise ValueError(f"{config.data}: split {config.split!r} has no cases")
    out = Path(config.out) if config.out else FinetuneRun(config.run).evaluation(config.split).path
    out.mkdir(parents=True, exist_ok=True)
    if description["task"] == "seg":
        if description["class_names"] != dataset.class_names:
            raise ValueError(f"{config.data}: labels {dataset.class_names} differ from the run's {description['class_names']}")
        result = evaluate_segmentation(network, description, cases, config, out, console)
    else:
        result = evaluate_classification(network, description, cases, config, out)
    console.print(EvaluationFolder(out).report.read_text(encoding="utf-8"))
    return result
