"""Write labelled cases as an nnU-Net v2 raw dataset (the reverse of reading one in ``mssl.data.sources``).

``nnUNet_raw/DatasetXXX_Name/`` gets ``imagesTr/CASE_0000.nii.gz`` + ``labelsTr/CASE.nii.gz`` for the
training cases, ``imagesTs/`` + ``labelsTs/`` for the test cases (nnU-Net's planner ignores them; its
predictor and evaluation read them), and a ``dataset.json``. Labels can be narrowed to some of the
source classes, renumbered 1..n in the order given; every other class becomes background, which is only
right when each case contours all the kept classes (OpenKBP's labels are partial: pick such cases).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mssl.data.sources import Case

IMAGE_SUFFIX = "_0000"  # nnU-Net's channel suffix: one CT channel
FILE_ENDING = ".nii.gz"


def label_lookup(class_names: Sequence[str], keep: Sequence[str]) -> np.ndarray:
    """Source label value → raw-dataset label value (kept classes 1..n in ``keep`` order, the rest 0)."""
    unknown = [name for name in keep if name not in class_names]
    if unknown:
        raise ValueError(f"classes {unknown} are not among the dataset's labels {list(class_names)}")
    lookup = np.zeros(len(class_names), dtype=np.uint8)
    for new, name in enumerate(keep, start=1):
        lookup[list(class_names).index(name)] = new
    return lookup


def _write_case(case: Case, folder: Path, images: str, labels: str, lookup: np.ndarray, subsample: int) -> None:
    import SimpleITK as sitk

    if case.label is None:
        raise ValueError(f"{case.image}: case {case.case_id} has no label; an nnU-Net raw dataset needs one per case")
    image = sitk.ReadImage(str(case.image))[::subsample, ::subsample, ::subsample]
    label = sitk.ReadImage(str(case.label))[::subsample, ::subsample, ::subsample]
    values = sitk.GetArrayViewFromImage(label)
    if values.min() < 0 or values.max() >= len(lookup):
        raise ValueError(f"{case.label}: label values {int(values.min())}..{int(values.max())} outside 0..{len(lookup) - 1}")
    remapped = sitk.GetImageFromArray(lookup[values.astype(np.int64)])
    remapped.CopyInformation(label)
    sitk.WriteImage(image, str(folder / images / f"{case.case_id}{IMAGE_SUFFIX}{FILE_ENDING}"))
    sitk.WriteImage(remapped, str(folder / labels / f"{case.case_id}{FILE_ENDING}"))


def write_raw_dataset(
    folder: str | Path,
    training: Sequence[Case],
    class_names: Sequence[str],
    keep: Sequence[str] | None = None,
    test: Sequence[Case] = (),
    channel: str = "CT",
    subsample: int = 1,
) -> Path:
    """Write the raw dataset ``folder`` (named ``DatasetXXX_Name``); returns its ``dataset.json``.

    ``class_names``: the source labels by value (index 0 = background); ``keep``: the classes to keep
    (default: all but background); ``channel``: nnU-Net's channel name, which picks its normalisation
    ("CT" → CTNormalization); ``subsample``: keep every n-th voxel (small volumes for tests).
    """
    folder = Path(folder)
    keep = list(keep) if keep is not None else list(class_names[1:])
    lookup = label_lookup(class_names, keep)
    if not training:
        raise ValueError(f"{folder}: no training cases")
    ids = [c.case_id for c in [*training, *test]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{folder}: case ids repeat ({sorted({i for i in ids if ids.count(i) > 1})})")
    for cases, images, labels in ((training, "imagesTr", "labelsTr"), (test, "imagesTs", "labelsTs")):
        for sub in (images, labels) if cases else ():
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for case in cases:
            _write_case(case, folder, images, labels, lookup, subsample)
    dataset = {
        "channel_names": {"0": channel},
        "labels": {"background": 0, **{name: i for i, name in enumerate(keep, start=1)}},
        "numTraining": len(training),
        "file_ending": FILE_ENDING,
    }
    out = folder / "dataset.json"
    out.write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return out
