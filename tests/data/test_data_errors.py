"""Every bad input of issue 2 gives one line naming the file and the problem; runs go on or stop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bad_inputs import image_files
from data_helpers import synthetic_ct, write_dicom_series, write_nifti

from mssl.data.cache import CacheIndex
from mssl.data.errors import DataError
from mssl.data.prepare import prepare
from mssl.data.preprocess import PresetConfig

PRESET = PresetConfig(name="ct")
SHAPE = (24, 20, 16)


def test_skip_reports_every_bad_input_by_file_and_goes_on(tmp_path: Path) -> None:
    expected = image_files(tmp_path, SHAPE)
    report = prepare(tmp_path / "list.json", tmp_path / "cache", PRESET, on_error="skip")
    assert sorted(report.written) == ["good", "good_1"]  # unlabelled and labelled use of good.nii.gz
    failures = {str(Path(path).relative_to(tmp_path)): problem for path, problem in report.failed}
    assert failures.keys() == expected.keys()
    for path, problem in failures.items():
        assert expected[path] in problem, (path, problem)
        assert "\n" not in problem
    assert report.ok and f"2 written, 0 unchanged, {len(expected)} failed" in report.summary()
    assert len(CacheIndex.open(tmp_path / "cache")) == 2


def test_stop_ends_at_the_first_bad_file(tmp_path: Path) -> None:
    hu, _ = synthetic_ct(SHAPE)
    write_nifti(tmp_path / "src" / "b_good.nii.gz", hu)
    write_nifti(tmp_path / "src" / "c_good.nii.gz", hu)
    write_nifti(tmp_path / "src" / "a_constant.nii.gz", np.zeros(SHAPE, np.int16))
    report = prepare(tmp_path / "src", tmp_path / "cache", PRESET, on_error="stop")
    assert report.stopped and not report.ok
    assert [Path(p).name for p, _ in report.failed] == ["a_constant.nii.gz"] and report.written == []
    assert "stopped" in report.summary()


def test_a_source_that_turns_bad_keeps_its_cached_case(tmp_path: Path) -> None:
    hu, _ = synthetic_ct(SHAPE)
    source = write_nifti(tmp_path / "src" / "case.nii.gz", hu)
    prepare(tmp_path / "src", tmp_path / "cache", PRESET)
    before = CacheIndex.open(tmp_path / "cache")
    image_before = np.array(before.image("case"))
    source.write_bytes(source.read_bytes()[:100])  # now truncated
    report = prepare(tmp_path / "src", tmp_path / "cache", PRESET)
    assert report.written == [] and len(report.failed) == 1 and "truncated" in report.failed[0][1]
    after = CacheIndex.open(tmp_path / "cache")
    assert after.case("case").record == before.case("case").record
    np.testing.assert_array_equal(after.image("case"), image_before)


def test_four_d_is_fine_with_a_channel_axis(tmp_path: Path) -> None:
    hu, _ = synthetic_ct(SHAPE)
    write_nifti(tmp_path / "src" / "two.nii.gz", np.stack([hu, hu], axis=-1))
    report = prepare(tmp_path / "src", tmp_path / "cache", PresetConfig(name="ct", channel_axis=3))
    assert report.written == ["two"]
    assert CacheIndex.open(tmp_path / "cache").image("two").shape[0] == 2


def test_empty_source_raises(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError, match="empty source"):
        prepare(tmp_path / "src", tmp_path / "cache", PRESET)


def test_other_dicom_series_in_the_same_run_still_work(tmp_path: Path) -> None:
    hu, _ = synthetic_ct(SHAPE)
    write_dicom_series(tmp_path / "src" / "ok", hu)
    (tmp_path / "src" / "broken").mkdir()
    (tmp_path / "src" / "broken" / "x.dcm").write_bytes(b"not dicom at all")
    report = prepare(tmp_path / "src", tmp_path / "cache", PRESET)
    assert report.written == ["ok"]
    assert [(Path(p).name, "unreadable DICOM series" in m) for p, m in report.failed] == [("broken", True)]
