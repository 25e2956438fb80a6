"""mssl.data.sources: every source kind yields the right cases, ids, labels and extra keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import synthetic_ct, write_dicom_series, write_nifti, write_sitk

from mssl.data.errors import DataError
from mssl.data.sources import find_cases


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return synthetic_ct(shape=(12, 10, 8))[0]


def test_folder_is_searched_recursively_for_every_format(tmp_path: Path, volume: np.ndarray) -> None:
    write_nifti(tmp_path / "a.nii.gz", volume)
    write_nifti(tmp_path / "sub" / "b.nii", volume)
    write_sitk(tmp_path / "sub" / "deeper" / "c.nrrd", volume)
    write_sitk(tmp_path / "d.mha", volume)
    write_sitk(tmp_path / "e.mhd", volume)  # writes e.raw next to it, which is not a case
    (tmp_path / "notes.txt").write_text("not an image", encoding="utf-8")
    cases = find_cases(tmp_path)
    assert sorted(c.case_id for c in cases) == ["a", "b", "c", "d", "e"]
    assert all(c.label is None and c.image.is_file() for c in cases)


def test_single_image_file_is_one_case(tmp_path: Path, volume: np.ndarray) -> None:
    path = write_nifti(tmp_path / "scan 1.nii.gz", volume)
    [case] = find_cases(path)
    assert case.case_id == "scan_1" and case.image == path and case.label is None


def test_colliding_names_get_their_relative_path(tmp_path: Path, volume: np.ndarray) -> None:
    write_nifti(tmp_path / "site1" / "scan.nii.gz", volume)
    write_nifti(tmp_path / "site2" / "scan.nii.gz", volume)
    assert sorted(c.case_id for c in find_cases(tmp_path)) == ["site1_scan", "site2_scan"]


def test_glob(tmp_path: Path, volume: np.ndarray) -> None:
    for name in ("x1", "x2", "y1"):
        write_nifti(tmp_path / "d" / f"{name}.nii.gz", volume)
    cases = find_cases(str(tmp_path / "**" / "x*.nii.gz"))
    assert [c.case_id for c in cases] == ["x1", "x2"]


def test_datalist_relative_paths_extra_keys_and_sections(tmp_path: Path, volume: np.ndarray) -> None:
    write_nifti(tmp_path / "imagesTr" / "p1.nii.gz", volume)
    write_nifti(tmp_path / "labelsTr" / "p1.nii.gz", (volume > 0).astype(np.uint8))
    write_nifti(tmp_path / "imagesTs" / "p2.nii.gz", volume)
    datalist = {
        "training": [{"image": "imagesTr/p1.nii.gz", "label": "labelsTr/p1.nii.gz", "split": "train", "age": 41.5}],
        "test": ["imagesTs/p2.nii.gz"],  # MSD test entries are bare paths
    }
    (tmp_path / "dataset.json").write_text(json.dumps(datalist), encoding="utf-8")
    by_file = {c.case_id: c for c in find_cases(tmp_path / "dataset.json")}
    by_folder = {c.case_id: c for c in find_cases(tmp_path)}  # a folder holding dataset.json is a datalist
    assert by_file == by_folder
    assert by_file["p1"].label == (tmp_path / "labelsTr" / "p1.nii.gz").resolve()
    assert by_file["p1"].extra == {"split": "train", "age": 41.5, "section": "training"}
    assert by_file["p2"].label is None and by_file["p2"].extra == {"section": "test"}
    assert [c.case_id for c in find_cases(tmp_path / "dataset.json", sections=("training",))] == ["p1"]


def test_datalist_base_dir(tmp_path: Path, volume: np.ndarray) -> None:
    write_nifti(tmp_path / "data" / "img.nii.gz", volume)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "list.json").write_text(json.dumps({"training": [{"image": "img.nii.gz"}]}), encoding="utf-8")
    with pytest.raises(DataError, match="img.nii.gz: does not exist"):
        find_cases(tmp_path / "lists" / "list.json")
    assert find_cases(tmp_path / "lists" / "list.json", base_dir=tmp_path / "data")[0].image.is_file()


def test_missing_datalist_path_raises_or_is_kept(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"image": "gone.nii.gz", "label": "gone_label.nii.gz"}]}), encoding="utf-8")
    with pytest.raises(DataError) as error:
        find_cases(tmp_path / "list.json")
    assert str(error.value).startswith(str(tmp_path / "gone.nii.gz")) and "list.json" in str(error.value)
    kept = find_cases(tmp_path / "list.json", missing="keep")
    assert [c.image.name for c in kept] == ["gone.nii.gz"]


def test_malformed_datalist_names_the_entry(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps({"training": [{"label": "x.nii.gz"}]}), encoding="utf-8")
    with pytest.raises(DataError, match="'training' entry 0: needs an 'image' path"):
        find_cases(tmp_path / "list.json")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="broken.json: cannot read datalist JSON"):
        find_cases(tmp_path / "broken.json")


def test_nnunet_raw_layout(tmp_path: Path, volume: np.ndarray) -> None:
    for case in ("BRATS_001", "BRATS_002"):
        write_nifti(tmp_path / "imagesTr" / f"{case}_0000.nii.gz", volume)
        write_nifti(tmp_path / "imagesTr" / f"{case}_0001.nii.gz", volume)  # a second modality is not a case
    write_nifti(tmp_path / "labelsTr" / "BRATS_001.nii.gz", (volume > 0).astype(np.uint8))
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "file_ending": ".nii.gz"}), encoding="utf-8")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002"]
    assert cases[0].image.name == "BRATS_001_0000.nii.gz"
    assert cases[0].label == tmp_path / "labelsTr" / "BRATS_001.nii.gz" and cases[1].label is None


def test_dicom_series_one_case_per_series_uid(tmp_path: Path, volume: np.ndarray) -> None:
    write_dicom_series(tmp_path / "patient1" / "ct", volume, series_uid="1.2.3.100")
    write_dicom_series(tmp_path / "patient2", volume, series_uid="1.2.3.200")
    write_dicom_series(tmp_path / "patient2", volume[::-1].copy(), series_uid="1.2.3.201")
    cases = {c.case_id: c for c in find_cases(tmp_path)}
    assert sorted(cases) == ["ct", "patient2_200", "patient2_201"]
    assert cases["ct"].image == tmp_path / "patient1" / "ct" and cases["ct"].extra == {"series_uid": "1.2.3.100"}
    assert cases["patient2_201"].extra["series_uid"] == "1.2.3.201"


@pytest.mark.parametrize("make", ["empty_folder", "only_text", "glob_without_match"])
def test_empty_source_is_an_error(tmp_path: Path, make: str) -> None:
    source: str | Path = tmp_path
    if make == "only_text":
        (tmp_path / "readme.txt").write_text("nothing here", encoding="utf-8")
    if make == "glob_without_match":
        source = str(tmp_path / "*.nii.gz")
    with pytest.raises(DataError, match="empty source"):
        find_cases(source)


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: does not exist"):
        find_cases(tmp_path / "nowhere")
