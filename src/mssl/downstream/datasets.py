"""Labelled cases for downstream work: the datalist, fixed splits, the k labelled cases, transforms.

The test split is fixed by the datalist (``split`` key) or, when absent, by a seed-0 permutation of the
sorted case ids, never by the run's seed. The k labelled cases of seed s are the first k of an
s-seeded permutation of the training split, so k=2 ⊂ k=5 ⊂ k=10 within one seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from monai import transforms as mt

from mssl.data.preprocess import PresetConfig, as_data_error, build_transforms, image_input
from mssl.data.sources import Case, find_cases
from mssl.downstream.partial_labels import present_mask

SPLITS = ("train", "validation", "test")


@dataclass
class Dataset:
    """A datalist with its class names (index 0 = background), modality and cases split three ways."""

    path: Path
    class_names: list[str]
    modality: str
    splits: dict[str, list[Case]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def default_preset(self) -> str:
        return "ct" if self.modality.upper().startswith("CT") else "mri"


def load_dataset(path: Path, test_fraction: float = 0.3, validation_fraction: float = 0.1) -> Dataset:
    """Read an MSD-style ``dataset.json`` (cases via :func:`mssl.data.sources.find_cases`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset.json not found")
    meta = json.loads(path.read_text(encoding="utf-8"))
    labels = meta.get("labels", {"0": "background"})
    if sorted(int(k) for k in labels) != list(range(len(labels))):
        raise ValueError(f"{path}: 'labels' must be numbered 0..N-1, got {sorted(labels, key=int)}")
    class_names = [labels[k] for k in sorted(labels, key=int)]
    modality = str(meta.get("modality", {}).get("0", "CT"))
    cases = find_cases(path, sections=("training",))
    return Dataset(path, class_names, modality, split_cases(cases, test_fraction, validation_fraction))


def split_cases(cases: Sequence[Case], test_fraction: float, validation_fraction: float) -> dict[str, list[Case]]:
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


def labelled_subset(cases: Sequence[Case], k: int | None, seed: int) -> list[Case]:
    """The first k of a seed-``seed`` permutation (nested across k); all cases when k is None."""
    if k is None:
        return list(cases)
    if k > len(cases):
        raise ValueError(f"asked for {k} labelled cases but the training split has only {len(cases)}")
    ordered = sorted(cases, key=lambda c: c.case_id)
    random.Random(seed).shuffle(ordered)
    return ordered[:k]


def preprocessing(preset: PresetConfig, with_label: bool, num_classes: int | None = None) -> mt.Compose:
    """The project's preprocessing (:func:`mssl.data.preprocess.build_transforms`), so downstream sees
    volumes exactly as pre-training did; invertible, which evaluation relies on. With ``num_classes``,
    a label value outside 0..num_classes-1 is an error naming the file."""
    return build_transforms(preset, with_label, range(num_classes) if num_classes is not None else None)


def case_dict(case: Case, class_names: Sequence[str], with_label: bool) -> dict[str, Any]:
    """The dict the transforms consume, with the case's present-class mask (C,) as ``present``."""
    item: dict[str, Any] = {"image": image_input(case), "case_id": case.case_id}
    if with_label:
        if case.label is None:
            raise ValueError(f"case {case.case_id} ({case.image}) has no label")
        item["label"] = str(case.label)
        item["present"] = present_mask(case.extra.get("present_labels"), class_names)
    return item


def data_channels(items: Sequence[dict[str, Any]], dataset: Path) -> int:
    """The input channels of preprocessed items (C, X, Y, Z), which every case must share."""
    counts: dict[int, list[str]] = {}
    for item in items:
        counts.setdefault(int(item["image"].shape[0]), []).append(str(item.get("case_id", "?")))
    if len(counts) != 1:
        shown = "; ".join(f"{count}: {', '.join(ids[:3])}" for count, ids in sorted(counts.items()))
        raise ValueError(f"{dataset}: cases have different channel counts ({shown}); one network takes one count")
    return next(iter(counts))


def preprocessed_item(preprocess: mt.Compose, case: Case, class_names: Sequence[str], with_label: bool) -> dict[str, Any]:
    """``preprocess`` applied to one case; a bad file is one ``DataError`` naming it, not MONAI's wrapped traceback."""
    try:
        return preprocess(case_dict(case, class_names, with_label))
    except RuntimeError as error:
        raise as_data_error(error, case) from error
