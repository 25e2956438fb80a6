"""Real volumes (3 OpenKBP CTs, 3 IXI T1 MRIs): every cached voxel traced back to its source voxel.

Prepared at native spacing, so each cache voxel maps through its affine onto exactly one source voxel:
orientation, foreground crop, intensity preset and label alignment are then checked value by value.
Skipped cleanly when ../shared/data is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from data_helpers import write_dicom_series

from mssl.data.cache import CacheIndex, CropDataset
from mssl.data.prepare import prepare
from mssl.data.preprocess import PresetConfig
from mssl.data.crops import CropRequest

pytestmark = pytest.mark.realdata
CASES = 3
PROBES = 2000


def _first_cases(dataset_dir: Path, tmp_path: Path) -> Path:
    document = json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8"))
    document["training"] = document["training"][:CASES]
    (tmp_path / "subset.json").write_text(json.dumps(document), encoding="utf-8")
    return tmp_path / "subset.json"


def _source_values(index: CacheIndex, case_id: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random cache voxels and the source voxels they come from: (cache image, source image, cache label, source label)."""
    case = index.case(case_id).record
    image, label = np.asarray(index.image(case_id))[0], np.asarray(index.label(case_id))[0]
    source_image = np.asarray(nib.load(case["image_source"]).dataobj)
    source_label = np.asarray(nib.load(case["label_source"]).dataobj)
    voxels = np.random.default_rng(seed).integers(0, image.shape, size=(PROBES, 3))
    world = np.asarray(case["affine"]) @ np.c_[voxels, np.ones(PROBES)].T
    source = np.linalg.solve(np.asarray(case["original_affine"]), world)[:3].T
    assert np.abs(source - source.round()).max() < 1e-3, "native spacing: voxels must land on source voxels"
    s = source.round().astype(int).T
    v = voxels.T
    return image[v[0], v[1], v[2]], source_image[s[0], s[1], s[2]], label[v[0], v[1], v[2]], source_label[s[0], s[1], s[2]]


def test_openkbp_ct(openkbp_dir: Path, tmp_path: Path) -> None:
    report = prepare(_first_cases(openkbp_dir, tmp_path), tmp_path / "cache", PresetConfig(name="ct"), base_dir=openkbp_dir)
    assert len(report.written) == CASES and not report.failed
    index = CacheIndex.open(tmp_path / "cache")
    labels = json.loads((openkbp_dir / "dataset.json").read_text(encoding="utf-8"))["labels"]
    for case in index.cases:
        record = case.record
        assert list(case.spacing) == pytest.approx(record["original_spacing"], abs=1e-5)  # native spacing kept
        assert np.all(np.diag(np.asarray(record["affine"]))[:3] > 0)  # RAS
        assert all(c <= o for c, o in zip(case.shape, record["original_shape"]))  # cropped to the body
        cached, hu, cached_label, source_label = _source_values(index, case.case_id)
        np.testing.assert_allclose(cached, np.clip((hu + 1000.0) / 2000.0, 0, 1), atol=1e-6)
        np.testing.assert_array_equal(cached_label, source_label)
        present = {labels[str(v)] for v in np.unique(np.asarray(index.label(case.case_id))) if v}
        assert present <= set(case.extra["present_labels"])


def test_ixi_mri(ixi_dir: Path, tmp_path: Path) -> None:
    report = prepare(_first_cases(ixi_dir, tmp_path), tmp_path / "cache", PresetConfig(name="mri"), base_dir=ixi_dir)
    assert len(report.written) == CASES
    index = CacheIndex.open(tmp_path / "cache")
    for case in index.cases:
        image = np.asarray(index.image(case.case_id))
        assert abs(image.mean()) < 1e-3 and abs(image.std() - 1) < 1e-3  # z-scored
        assert np.all(np.diag(np.asarray(case.record["affine"]))[:3] > 0)  # the source affine is permuted, the cache is RAS
        assert case.extra["age"] > 0 and case.extra["sex"] in ("M", "F")
        cached, raw, cached_label, source_label = _source_values(index, case.case_id)
        np.testing.assert_array_equal(cached_label, source_label)
        # between the clip percentiles the preset is one affine map of the raw intensity
        inside = (cached > cached.min() + 1e-4) & (cached < cached.max() - 1e-4)
        slope, intercept = np.polyfit(raw[inside], cached[inside], 1)
        assert slope > 0 and np.abs(slope * raw[inside] + intercept - cached[inside]).max() < 1e-3


def test_real_ct_as_dicom_series_reads_back_identically(openkbp_dir: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    entry = json.loads((openkbp_dir / "dataset.json").read_text(encoding="utf-8"))["training"][0]
    nifti = sitk.ReadImage(str(openkbp_dir / entry["image"]))
    volume = np.transpose(sitk.GetArrayFromImage(nifti), (2, 1, 0))  # (X, Y, Z) int16 HU
    write_dicom_series(tmp_path / "dicom" / "case", volume, nifti.GetSpacing(), origin=nifti.GetOrigin(), direction=nifti.GetDirection())
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "case.nii.gz").symlink_to(openkbp_dir / entry["image"])
    preset = PresetConfig(name="ct", spacing=(2.0, 2.0, 2.0))
    prepare(tmp_path / "dicom", tmp_path / "from_dicom", preset)
    prepare(tmp_path / "nifti", tmp_path / "from_nifti", preset)
    dicom, reference = CacheIndex.open(tmp_path / "from_dicom"), CacheIndex.open(tmp_path / "from_nifti")
    np.testing.assert_allclose(dicom.case("case").record["affine"], reference.case("case").record["affine"], atol=1e-3)
    np.testing.assert_allclose(dicom.image("case"), reference.image("case"), atol=1e-5)


def test_real_cache_crops(openkbp_dir: Path, ixi_dir: Path, tmp_path: Path) -> None:
    """S²DC-style single crops and GVSL-style pairs from real caches, finite and in range."""
    prepare(_first_cases(openkbp_dir, tmp_path), tmp_path / "ct", PresetConfig(name="ct", spacing=(2.0, 2.0, 2.0)), base_dir=openkbp_dir)
    index = CacheIndex.open(tmp_path / "ct")
    dataset = CropDataset(index, {"s2dc": CropRequest((64, 64, 32)), "gvsl": CropRequest((32, 32, 32), volumes=2)}, length=4, seed=0, foreground_bias=0.5)
    for item in range(len(dataset)):
        sample = dataset[item]
        assert sample["s2dc"].shape == (1, 1, 64, 64, 32) and sample["gvsl"].shape == (2, 1, 32, 32, 32)
        assert all(0 <= float(t.min()) and float(t.max()) <= 1 for t in sample.values())
