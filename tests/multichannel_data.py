"""Two-channel datasets built from the package's demo CTs (no tests here; imported by tests/test_multichannel_*.py).

Channel 0 is a demo CT subsampled to 32³ (every 4th voxel, the affine scaled to match); channel 1 is a
derived image, the CT mirrored inside the ``ct`` preset's HU window (``a_min + a_max - HU``), so after
preprocessing channel 1 must equal ``1 - channel 0`` voxel for voxel.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import DEMO_DATA

CASES = ("pt_119", "pt_132", "pt_201", "pt_22")
STEP = 4  # demo CTs are 128³: every 4th voxel gives 32³
A_MIN, A_MAX = -1000.0, 1000.0  # the ct preset's default window


def demo_case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hu, label, affine)`` of a demo CT subsampled to 32³ (float32 HU, uint8 organs)."""
    image = nib.load(DEMO_DATA / "imagesTr" / f"{name}.nii.gz")
    label = np.asarray(nib.load(DEMO_DATA / "labelsTr" / f"{name}.nii.gz").dataobj)[::STEP, ::STEP, ::STEP]
    affine = image.affine.copy()
    affine[:3, :3] *= STEP
    hu = np.asarray(image.dataobj, dtype=np.float32)[::STEP, ::STEP, ::STEP]
    return np.ascontiguousarray(hu), np.ascontiguousarray(label.astype(np.uint8)), affine


def mirrored(hu: np.ndarray) -> np.ndarray:
    """The derived second channel: the CT mirrored inside the preset window."""
    return A_MIN + A_MAX - hu


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def single_channel(root: Path, cases=CASES) -> Path:
    """The CTs alone as a folder of 3D NIfTI: the reference the two-channel caches are checked against."""
    for name in cases:
        hu, _, affine = demo_case(name)
        save(root / f"{name}.nii.gz", hu, affine)
    return root


def nnunet_raw(root: Path, cases=CASES, labels: bool = False) -> Path:
    """imagesTr/<case>_0000 (CT) and _0001 (mirrored CT), dataset.json naming both channels."""
    for name in cases:
        hu, label, affine = demo_case(name)
        save(root / "imagesTr" / f"{name}_0000.nii.gz", hu, affine)
        save(root / "imagesTr" / f"{name}_0001.nii.gz", mirrored(hu), affine)
        if labels:
            save(root / "labelsTr" / f"{name}.nii.gz", label, affine)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "mirrored CT"}, "file_ending": ".nii.gz"}), encoding="utf-8")
    return root


def msd_datalist(root: Path, cases=CASES, test_cases: tuple[str, ...] = ()) -> Path:
    """dataset.json whose ``image`` is a list of two files per case, with labels; ``test_cases`` get split test."""
    entries = []
    for name in cases:
        hu, label, affine = demo_case(name)
        save(root / "images" / f"{name}_ct.nii.gz", hu, affine)
        save(root / "images" / f"{name}_mirrored.nii.gz", mirrored(hu), affine)
        save(root / "labels" / f"{name}.nii.gz", label, affine)
        split = "test" if name in test_cases else "train"
        entries.append({"image": [f"images/{name}_ct.nii.gz", f"images/{name}_mirrored.nii.gz"], "label": f"labels/{name}.nii.gz", "split": split})
    demo = json.loads((DEMO_DATA / "dataset.json").read_text(encoding="utf-8"))
    datalist = {"modality": {"0": "CT", "1": "mirrored CT"}, "labels": demo["labels"], "training": entries}
    path = root / "dataset.json"
    path.write_text(json.dumps(datalist), encoding="utf-8")
    return path


def four_d(root: Path, cases=CASES) -> Path:
    """One 4D NIfTI per case, channels on the last axis."""
    for name in cases:
        hu, _, affine = demo_case(name)
        save(root / f"{name}.nii.gz", np.stack([hu, mirrored(hu)], axis=-1), affine)
    return root
