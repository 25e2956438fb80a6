"""mssl.data.preprocess: orientation, spacing, intensity presets on known values, labels, readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import synthetic_ct, write_nifti, write_sitk

from mssl.data.preprocess import PresetConfig, build_transforms, load_case
from mssl.data.sources import Case

LPS = np.diag([-1.5, -1.5, 3.0, 1.0])  # what ITK writes for an identity direction


@pytest.fixture(scope="module")
def ct() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_ct(shape=(40, 36, 24))


def _plain(name: str, **kwargs) -> PresetConfig:
    """A preset without crop or resampling, so output voxels map one to one onto input voxels."""
    return PresetConfig(name=name, foreground_crop=False, **kwargs)


def test_ct_window_maps_known_hu_values(tmp_path: Path) -> None:
    hu = np.array([-2000, -1000, -500, 0, 500, 1000, 3000], np.int16)
    volume = np.tile(hu[:, None, None], (1, 4, 4))
    case = Case("hu", write_nifti(tmp_path / "hu.nii.gz", volume))
    image = load_case(case, _plain("ct"))["image"][0, :, 0, 0]
    np.testing.assert_allclose(image, [0, 0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)
    narrow = load_case(case, _plain("ct", a_min=-500, a_max=500))["image"][0, :, 0, 0]
    np.testing.assert_allclose(narrow, [0, 0, 0, 0.5, 1, 1, 1], atol=1e-6)


def test_mri_percentile_clip_then_zscore(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    volume = rng.gamma(2.0, 100.0, size=(30, 28, 20)).astype(np.float32)
    volume[0, 0, 0] = 1e6  # an outlier the clip must remove
    image = load_case(Case("t1", write_nifti(tmp_path / "t1.nii.gz", volume)), _plain("mri"))["image"][0]
    low, high = np.percentile(volume, [0.5, 99.5])
    clipped = np.clip(volume, low, high)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(image, expected, atol=1e-3)
    assert abs(image.mean()) < 1e-4 and abs(image.std() - 1) < 1e-3


def test_none_keeps_intensities(tmp_path: Path, ct) -> None:
    image = load_case(Case("c", write_nifti(tmp_path / "c.nii.gz", ct[0])), _plain("none"))["image"][0]
    np.testing.assert_array_equal(image, ct[0].astype(np.float32))


def test_orientation_is_ras(tmp_path: Path, ct) -> None:
    """A volume stored L→R flipped (LPS affine) comes out flipped back, with a positive diagonal affine."""
    hu = ct[0]
    out = load_case(Case("lps", write_nifti(tmp_path / "lps.nii.gz", hu, LPS)), _plain("none"))
    np.testing.assert_array_equal(out["image"][0], hu[::-1, ::-1, :])
    affine = np.asarray(out["affine"])
    assert np.all(np.diag(affine)[:3] > 0)
    np.testing.assert_allclose(out["original_affine"], LPS)
    # the world position of the first output voxel is the last input voxel along x and y
    np.testing.assert_allclose(affine[:3, 3], (LPS @ [hu.shape[0] - 1, hu.shape[1] - 1, 0, 1])[:3])


def test_spacing_and_shape(tmp_path: Path, ct) -> None:
    out = load_case(Case("c", write_nifti(tmp_path / "c.nii.gz", ct[0])), _plain("ct", spacing=(3.0, 3.0, 2.0)))
    assert out["spacing"] == pytest.approx([3.0, 3.0, 2.0])
    assert out["original_spacing"] == pytest.approx([1.5, 1.5, 3.0])
    assert out["original_shape"] == [40, 36, 24]
    assert out["shape"] == [20, 18, 36] == list(out["image"].shape[1:])


def test_foreground_crop_is_the_body_bounding_box(tmp_path: Path, ct) -> None:
    hu = ct[0]
    out = load_case(Case("c", write_nifti(tmp_path / "c.nii.gz", hu)), PresetConfig(name="ct"))
    body = np.argwhere(hu > -500)
    assert out["shape"] == (body.max(0) - body.min(0) + 1).tolist()
    assert out["shape"] < [40, 36, 24]
    # the crop moved the origin to the first body voxel
    np.testing.assert_allclose(np.asarray(out["affine"])[:3, 3], body.min(0) * [1.5, 1.5, 3.0])


def test_label_follows_the_image_with_nearest_interpolation(tmp_path: Path, ct) -> None:
    hu, label = ct
    case = Case("c", write_nifti(tmp_path / "c.nii.gz", hu), write_nifti(tmp_path / "l.nii.gz", label))
    out = load_case(case, PresetConfig(name="ct", spacing=(2.0, 2.5, 2.0)))
    image, resampled = out["image"][0], out["label"]
    assert resampled.dtype == np.uint8 and resampled.shape == (1, *image.shape)
    assert set(np.unique(resampled)) == {0, 1, 2}  # nearest: no blended label values
    body = image > 0.3  # (40 HU + 1000) / 2000 = 0.52 inside, 0 outside
    dice = 2 * (body & (resampled[0] > 0)).sum() / (body.sum() + (resampled[0] > 0).sum())
    assert dice > 0.95
    assert image[resampled[0] == 2].mean() > 0.8  # the bony core (700 HU → 0.85) stays under label 2


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_formats_match_nifti(tmp_path: Path, ct, suffix: str) -> None:
    preset = PresetConfig(name="ct", spacing=(2.0, 2.0, 2.0))
    from_nifti = load_case(Case("n", write_nifti(tmp_path / "n.nii.gz", ct[0], LPS)), preset)
    from_itk = load_case(Case("i", write_sitk(tmp_path / f"i{suffix}", ct[0])), preset)
    np.testing.assert_allclose(from_itk["affine"], from_nifti["affine"], atol=1e-5)
    np.testing.assert_allclose(from_itk["image"], from_nifti["image"], atol=1e-5)


def test_channel_axis_reads_multichannel_volumes(tmp_path: Path, ct) -> None:
    hu, label = ct
    stacked = np.stack([hu, hu // 2], axis=-1)  # (X, Y, Z, 2)
    case = Case("mc", write_nifti(tmp_path / "mc.nii.gz", stacked), write_nifti(tmp_path / "l.nii.gz", label))
    out = load_case(case, _plain("none", channel_axis=3))
    assert out["image"].shape == (2, 40, 36, 24)
    np.testing.assert_array_equal(out["image"][1], hu // 2)


def test_build_transforms_standalone_and_invertible(tmp_path: Path, ct) -> None:
    """Downstream evaluation maps predictions back to the source grid with MONAI's inverse."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    hu, label = ct
    transforms = build_transforms(PresetConfig(name="ct", spacing=(2.0, 2.0, 2.0)), with_label=True)
    data = transforms({"image": str(write_nifti(tmp_path / "c.nii.gz", hu)), "label": str(write_nifti(tmp_path / "l.nii.gz", label))})
    assert isinstance(data["image"], MetaTensor) and data["image"].shape[0] == 1
    assert np.allclose(np.diag(data["image"].affine.numpy())[:3], 2.0)
    restored = Invertd("label", transform=transforms, orig_keys="label", nearest_interp=True)(data)["label"]
    assert tuple(restored.shape[1:]) == label.shape
    assert (restored[0].numpy().round() == label).mean() > 0.97


def test_preset_rejects_inverted_ranges() -> None:
    with pytest.raises(ValueError, match="a_min"):
        PresetConfig(name="ct", a_min=100, a_max=-100)
    with pytest.raises(ValueError, match="percentile"):
        PresetConfig(name="mri", lower=99, upper=1)
    with pytest.raises(ValueError, match="extra"):
        PresetConfig(name="ct", window=3)
