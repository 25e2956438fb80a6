"""Labelled cases for downstream work: the datalist, fixed splits, the k labelled cases, transforms.

The test split is fixed by the datalist (``split`` key) or, when absent, by a seed-0 permutation of the
sorted case ids, never by the run's seed. The k labelled cases of seed s are the first k of an
s-seeded permutation of the training split, so k=2 ⊂ k=5 ⊂ k=10 within one seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from monai import transforms as mt

from mssl.downstream.partial_labels import present_mask

SPLITS = ("train", "validation", "test")
CT_WINDOW = (-1000.0, 1000.0)  # HU mapped to [0, 1] for the ct preset


@dataclass
class LabelledCase:
    """One datalist entry; ``extra`` keeps every other key (split, present_labels, age, sex, ...)."""

    case_id: str
    image: Path
    label: Path | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """A datalist with its class names (index 0 = background), modality and cases split three ways."""

    path: Path
    class_names: list[str]
    modality: str
    splits: dict[str, list[LabelledCase]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def default_preset(self) -> str:
        return "ct" if self.modality.upper().startswith("CT") else "mri"


def load_dataset(path: Path, test_fraction: float = 0.3, validation_fraction: float = 0.1) -> Dataset:
    """Read an MSD-style ``dataset.json``; paths are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset.json not found")
    meta = json.loads(path.read_text())
    if "training" not in meta:
        raise ValueError(f"{path}: no 'training' list")
    labels = meta.get("labels", {"0": "background"})
    class_names = [labels[k] for k in sorted(labels, key=int)]
    if sorted(int(k) for k in labels) != list(range(len(labels))):
        raise ValueError(f"{path}: 'labels' must be numbered 0..N-1, got {sorted(labels, key=int)}")
    modality = str(meta.get("modality", {}).get("0", "CT"))
    cases = []
    for index, entry in enumerate(meta["training"]):
        if "image" not in entry:
            raise ValueError(f"{path}: training[{index}] has no 'image'")
        image = path.parent / entry["image"]
        label = path.parent / entry["label"] if entry.get("label") else None
        case_id = Path(entry["image"]).name.split(".")[0]
        extra = {k: v for k, v in entry.items() if k not in ("image", "label")}
        cases.append(LabelledCase(case_id, image, label, extra))
    return Dataset(path, class_names, modality, split_cases(cases, test_fraction, validation_fraction))


def split_cases(cases: Sequence[LabelledCase], test_fraction: float, validation_fraction: float) -> dict[str, list[LabelledCase]]:
    """The datalist's own split, or a fixed seed-0 split by sorted case id when it has none."""
    if any("split" in c.extra for c in cases):
        bad = sorted({str(c.extra.get("split")) for c in cases} - set(SPLITS))
        if bad:
            raise ValueError(f"split values {bad} are not among {SPLITS}")
        return {s: [c for c in cases if c.extra.get("split") == s] for s in SPLITS}
    ordered = sorted(cases, key=lambda c: c.case_id)
    random.Random(0).shuffle(ordered)
    n_test = round(len(ordered) * test_fraction)
    n_val = round(len(ordered) * validation_fraction)
    return {"test": ordered[:n_test], "validation": ordered[n_test : n_test + n_val], "train": ordered[n_test + n_val :]}


def labelled_subset(cases: Sequence[LabelledCase], k: int | None, seed: int) -> list[LabelledCase]:
    """The first k of a seed-``seed`` permutation (nested across k); all cases when k is None."""
    if k is None:
        return list(cases)
    if k > len(cases):
        raise ValueError(f"asked for {k} labelled cases but the training split has only {len(cases)}")
    ordered = sorted(cases, key=lambda c: c.case_id)
    random.Random(seed).shuffle(ordered)
    return ordered[:k]


def preprocessing(preset: str, spacing: Sequence[float] | None, with_label: bool) -> mt.Compose:
    """Load → channel first → RAS → optional resampling → intensity preset; invertible (for evaluation)."""
    keys = ["image", "label"] if with_label else ["image"]
    steps: list[mt.Transform] = [
        mt.LoadImaged(keys, image_only=True),
        mt.EnsureChannelFirstd(keys),
        mt.EnsureTyped(keys, dtype=torch.float32),
        mt.Orientationd(keys, axcodes="RAS"),
    ]
    if spacing is not None:
        modes = ("bilinear", "nearest") if with_label else ("bilinear",)
        steps.append(mt.Spacingd(keys, pixdim=tuple(spacing), mode=modes))
    if preset == "ct":
        steps.append(mt.ScaleIntensityRanged("image", *CT_WINDOW, 0.0, 1.0, clip=True))
    elif preset == "mri":
        steps.append(mt.NormalizeIntensityd("image", nonzero=True))
    elif preset != "none":
        raise ValueError(f"unknown preset {preset!r}; expected ct, mri or none")
    return mt.Compose(steps)


def case_dict(case: LabelledCase, class_names: Sequence[str], with_label: bool) -> dict[str, Any]:
    """The dict the transforms consume, with the case's present-class mask (C,) as ``present``."""
    item: dict[str, Any] = {"image": str(case.image), "case_id": case.case_id}
    if with_label:
        if case.label is None:
            raise ValueError(f"case {case.case_id} ({case.image}) has no label")
        item["label"] = str(case.label)
        item["present"] = present_mask(case.extra.get("present_labels"), class_names)
    return item


def segmentation_training_transforms(roi: Sequence[int], crops_per_case: int, positive_fraction: float) -> mt.Compose:
    """Pad to the roi, foreground-oversampled crops, mild intensity jitter (no flips: left/right organs)."""
    keys = ["image", "label"]
    return mt.Compose(
        [
            mt.SpatialPadd(keys, spatial_size=tuple(roi)),
            mt.RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=tuple(roi),
                pos=positive_fraction,
                neg=1.0 - positive_fraction,
                num_samples=crops_per_case,
            ),
            mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        ]
    )
