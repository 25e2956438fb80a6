"""Multi-channel input through `prepare`: nnU-Net ``_000N`` files, MSD ``image`` lists and 4D NIfTI give
C-channel caches; channel files that do not fit together are one-line errors naming case and file.

Data: demo CTs subsampled to 32³ (channel 0) and a derived channel 1, the CT mirrored inside the ct
preset's HU window (see tests/multichannel_data.py), so channel 1 of the cache must equal 1 - channel 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from multichannel_data import CASES, demo_case, four_d, msd_datalist, mirrored, nnunet_raw, save, single_channel

from mssl.data.cache import CacheIndex, CropDataset
from mssl.data.errors import DataError
from mssl.data.prepare import prepare
from mssl.data.sources import find_cases
from mssl.methods.base import CropRequest

TWO = CASES[:2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> CacheIndex:
    """The CTs alone through the same preset: what channel 0 of every two-channel cache must equal."""
    root = tmp_path_factory.mktemp("reference")
    assert prepare(single_channel(root / "src", TWO), root / "cache", "ct").ok
    return CacheIndex.open(root / "cache")


@pytest.mark.parametrize("layout", ["nnunet", "msd", "4d"])
def test_each_layout_prepares_two_channels_with_the_derived_image_as_channel_1(tmp_path: Path, layout: str, reference: CacheIndex) -> None:
    """Channel 0 equals the single-channel cache (same crop, window and resampling), channel 1 the mirrored CT
    after the same preprocessing (1 - channel 0), on every case."""
    source, options = {
        "nnunet": (lambda: nnunet_raw(tmp_path / "raw", TWO), {}),
        "msd": (lambda: msd_datalist(tmp_path / "msd", TWO), {}),
        "4d": (lambda: four_d(tmp_path / "4d", TWO), {"channel_axis": -1}),
    }[layout]
    report = prepare(source(), tmp_path / "cache", "ct", **options)
    assert report.ok and not report.failed, report.failed
    index = CacheIndex.open(tmp_path / "cache")
    assert len(index) == len(TWO)
    for case in index.cases:
        name = case.case_id.removesuffix("_ct")
        image, expected = np.asarray(index.image(case.case_id)), np.asarray(reference.image(name))
        assert case.channels == 2 and image.shape == (2, *expected.shape[1:])
        np.testing.assert_array_equal(image[0], expected[0])
        np.testing.assert_allclose(image[1], 1.0 - image[0], atol=1e-6)
        assert image[0].std() > 0.1  # a real CT, not a constant that would make the check trivial


def test_mri_preset_normalises_each_channel_on_its_own(tmp_path: Path) -> None:
    """A second channel that is an affine copy of the first (10·HU + 5000) z-scores to the same values."""
    hu, _, affine = demo_case(CASES[0])
    save(tmp_path / "raw" / "imagesTr" / "a_0000.nii.gz", hu, affine)
    save(tmp_path / "raw" / "imagesTr" / "a_0001.nii.gz", 10 * hu + 5000, affine)
    assert prepare(tmp_path / "raw", tmp_path / "cache", "mri").ok
    image = np.asarray(CacheIndex.open(tmp_path / "cache").image("a"))
    np.testing.assert_allclose(image[1], image[0], atol=1e-4)
    assert abs(float(image[1].mean())) < 1e-3 and abs(float(image[1].std()) - 1) < 1e-3


def test_crops_larger_than_the_volume_pad_each_channel_with_its_own_minimum(tmp_path: Path) -> None:
    """Preset none keeps HU: channel 0 (CT) bottoms out at -1000 HU, channel 1 (half the CT) at -500."""
    hu, _, affine = demo_case(CASES[0])
    save(tmp_path / "raw" / "imagesTr" / "a_0000.nii.gz", hu, affine)
    save(tmp_path / "raw" / "imagesTr" / "a_0001.nii.gz", hu / 2, affine)
    assert prepare(tmp_path / "raw", tmp_path / "cache", "none", foreground_crop=False).ok
    index = CacheIndex.open(tmp_path / "cache")
    assert index.case("a").pad_value == (float(hu.min()), float(hu.min()) / 2)
    with pytest.warns(UserWarning, match="will be padded"):
        crop = CropDataset(index, {"big": CropRequest((40, 40, 40))}, length=1, seed=0)[0]["big"][0].numpy()
    image = np.asarray(index.image("a"))
    inside = np.zeros(crop.shape[1:], bool)
    for offset in np.ndindex(*(40 - n + 1 for n in image.shape[1:])):
        box = tuple(slice(o, o + n) for o, n in zip(offset, image.shape[1:]))
        if np.array_equal(crop[:, box[0], box[1], box[2]], image):
            inside[box] = True
            break
    assert inside.any(), "the whole volume sits somewhere inside the crop"
    assert (crop[0][~inside] == hu.min()).all() and (crop[1][~inside] == hu.min() / 2).all()


def test_channel_files_of_different_shapes_fail_naming_case_and_file(tmp_path: Path) -> None:
    """The mirrored channel of one case is cut to 31 slices: that case fails, the other is cached."""
    raw = nnunet_raw(tmp_path / "raw", TWO)
    hu, _, affine = demo_case(TWO[0])
    bad = save(raw / "imagesTr" / f"{TWO[0]}_0001.nii.gz", mirrored(hu)[..., :31], affine)
    report = prepare(raw, tmp_path / "cache", "ct")
    assert report.written == [TWO[1]]
    [(path, problem)] = report.failed
    assert path == str(bad)
    assert problem == f"channel 1 of case {TWO[0]} has shape (32, 32, 31) but channel 0 ({TWO[0]}_0000.nii.gz) has (32, 32, 32)"


def test_channel_files_on_different_grids_fail(tmp_path: Path) -> None:
    hu, _, affine = demo_case(TWO[0])
    shifted = affine.copy()
    shifted[0, 3] += 4.0
    save(tmp_path / "a_t1.nii.gz", hu, affine)
    bad = save(tmp_path / "a_t2.nii.gz", mirrored(hu), shifted)
    (tmp_path / "list.json").write_text('{"training": [{"image": ["a_t1.nii.gz", "a_t2.nii.gz"]}]}', encoding="utf-8")
    report = prepare(tmp_path / "list.json", tmp_path / "cache", "ct")
    assert report.failed == [(str(bad), "channel 1 of case a_t1 is not on the grid of channel 0 (a_t1.nii.gz): their affines differ")]


def test_a_missing_channel_file_is_named_with_its_case(tmp_path: Path) -> None:
    """nnU-Net: dataset.json names two channels and one case has only _0000."""
    raw = nnunet_raw(tmp_path / "raw", TWO)
    missing = raw / "imagesTr" / f"{TWO[0]}_0001.nii.gz"
    missing.unlink()
    with pytest.raises(DataError) as error:
        find_cases(raw)
    assert str(error.value) == f"{missing}: does not exist: case {TWO[0]} needs 2 channel files (_0000 to _0001)"
    report = prepare(raw, tmp_path / "cache", "ct")  # prepare goes on without that case
    assert report.written == [TWO[1]]
    assert report.failed == [(str(missing), f"does not exist (channel 1 of case {TWO[0]})")]


def test_channel_count_without_dataset_json_is_the_largest_case(tmp_path: Path) -> None:
    raw = nnunet_raw(tmp_path / "raw", TWO)
    (raw / "dataset.json").unlink()
    (raw / "imagesTr" / f"{TWO[1]}_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=f"{TWO[1]}_0001.nii.gz: does not exist: case {TWO[1]} needs 2 channel files"):
        find_cases(raw)


def test_a_datalist_image_list_with_a_missing_file_is_named(tmp_path: Path) -> None:
    hu, _, affine = demo_case(TWO[0])
    save(tmp_path / "a_t1.nii.gz", hu, affine)
    (tmp_path / "list.json").write_text('{"training": [{"image": ["a_t1.nii.gz", "a_t2.nii.gz"]}]}', encoding="utf-8")
    with pytest.raises(DataError, match=r"a_t2.nii.gz: does not exist \(listed in .*list.json, 'training' entry 0\)"):
        find_cases(tmp_path / "list.json")
    with pytest.raises(DataError, match="needs an 'image' path string or a non-empty list"):
        (tmp_path / "empty.json").write_text('{"training": [{"image": []}]}', encoding="utf-8")
        find_cases(tmp_path / "empty.json")
