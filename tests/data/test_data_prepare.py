"""mssl.data.prepare and ``mssl prepare``: idempotence, change detection, parallel workers, kill-resume."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from data_helpers import synthetic_ct, write_nifti
from typer.testing import CliRunner

from mssl.cli import app
from mssl.data.cache import INDEX_NAME, CacheIndex
from mssl.data.errors import DataError
from mssl.data.prepare import prepare
from mssl.data.preprocess import PresetConfig

PRESET = PresetConfig(name="ct", spacing=(2.0, 2.0, 2.0))


def _source(root: Path, count: int, shape=(30, 28, 20)) -> Path:
    for number in range(count):
        write_nifti(root / f"case{number:02d}.nii.gz", synthetic_ct(shape, seed=number)[0])
    return root


def _arrays(cache: Path) -> dict[str, bytes]:
    index = CacheIndex.open(cache)
    return {c.case_id: np.asarray(index.image(c.case_id)).tobytes() for c in index.cases}


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "source_stat"}


def test_second_run_skips_unchanged_and_redoes_changed(tmp_path: Path) -> None:
    source, cache = _source(tmp_path / "src", 3), tmp_path / "cache"
    first = prepare(source, cache, PRESET)
    assert sorted(first.written) == ["case00", "case01", "case02"]
    index_bytes = (cache / INDEX_NAME).read_bytes()

    second = prepare(source, cache, PRESET)
    assert second.written == [] and sorted(second.unchanged) == ["case00", "case01", "case02"]
    assert (cache / INDEX_NAME).read_bytes() == index_bytes

    old = CacheIndex.open(cache).case("case01").record
    write_nifti(source / "case01.nii.gz", synthetic_ct((30, 28, 20), seed=99)[0])
    os.utime(source / "case00.nii.gz")  # touched, bytes unchanged
    third = prepare(source, cache, PRESET)
    assert third.written == ["case01"] and sorted(third.unchanged) == ["case00", "case02"]
    new = CacheIndex.open(cache).case("case01").record
    assert new["source_hash"] != old["source_hash"] and new["image_file"] != old["image_file"]
    assert not (cache / old["image_file"]).exists()  # replaced arrays are removed once the index moved on
    assert sorted(p.name for p in (cache / "images").iterdir()) == sorted(Path(r.record["image_file"]).name for r in CacheIndex.open(cache).cases)


def test_dicom_reruns_check_file_stats_not_series_headers(tmp_path: Path, monkeypatch) -> None:
    from data_helpers import write_dicom_series

    hu = synthetic_ct((30, 28, 20))[0]
    write_dicom_series(tmp_path / "src" / "a", hu, series_uid="1.2.3.1")
    write_dicom_series(tmp_path / "src" / "a", hu[::-1].copy(), series_uid="1.2.3.2")
    assert sorted(prepare(tmp_path / "src", tmp_path / "cache", PRESET).written) == ["a_1", "a_2"]
    monkeypatch.setattr("mssl.data.prepare.dicom_series", lambda folder: pytest.fail("the rerun re-read series headers to check for changes"))
    assert sorted(prepare(tmp_path / "src", tmp_path / "cache", PRESET).unchanged) == ["a_1", "a_2"]


def test_datalist_keys_update_without_reprocessing(tmp_path: Path) -> None:
    _source(tmp_path / "src", 1)
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": [{"image": "src/case00.nii.gz", "split": "train"}]}), encoding="utf-8")
    prepare(datalist, tmp_path / "cache", PRESET)
    datalist.write_text(json.dumps({"training": [{"image": "src/case00.nii.gz", "split": "test"}]}), encoding="utf-8")
    report = prepare(datalist, tmp_path / "cache", PRESET)
    assert report.unchanged == ["case00"]
    assert CacheIndex.open(tmp_path / "cache").case("case00").extra["split"] == "test"


def test_another_preset_needs_another_cache(tmp_path: Path) -> None:
    source = _source(tmp_path / "src", 1)
    prepare(source, tmp_path / "cache", PRESET)
    with pytest.raises(DataError, match="another preset.*spacing"):
        prepare(source, tmp_path / "cache", PresetConfig(name="ct", spacing=(1.0, 1.0, 1.0)))


def test_a_second_source_never_overwrites_a_case_with_the_same_id(tmp_path: Path) -> None:
    first, second = _source(tmp_path / "one", 1), tmp_path / "two"
    write_nifti(second / "case00.nii.gz", synthetic_ct((30, 28, 20), seed=5)[0])
    prepare(first, tmp_path / "cache", PRESET)
    before = CacheIndex.open(tmp_path / "cache").case("case00").record
    report = prepare(second, tmp_path / "cache", PRESET, on_error="stop")
    assert report.stopped and report.written == [] and "already cached from" in report.failed[0][1]
    assert CacheIndex.open(tmp_path / "cache").case("case00").record == before


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    source, cache = _source(tmp_path / "src", 1), tmp_path / "cache"
    (cache / "images").mkdir(parents=True)
    (cache / "images" / "case00.deadbeef.npy.tmp").write_bytes(b"half written")
    prepare(source, cache, PRESET)
    assert not list(cache.rglob("*.tmp"))


@pytest.mark.slow
def test_parallel_workers_write_the_same_cache(tmp_path: Path) -> None:
    source = _source(tmp_path / "src", 3)
    serial = prepare(source, tmp_path / "serial", PRESET, workers=1)
    parallel = prepare(source, tmp_path / "parallel", PRESET, workers=2)
    assert sorted(parallel.written) == sorted(serial.written)
    assert _arrays(tmp_path / "parallel") == _arrays(tmp_path / "serial")
    assert [_comparable(c.record) for c in CacheIndex.open(tmp_path / "parallel").cases] == [
        _comparable(c.record) for c in CacheIndex.open(tmp_path / "serial").cases
    ]


@pytest.mark.slow
def test_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path: Path) -> None:
    count = 10
    source = _source(tmp_path / "src", count, shape=(48, 44, 32))
    preset = PresetConfig(name="ct", spacing=(1.0, 1.0, 1.0))
    cache = tmp_path / "killed"
    command = [sys.executable, "-c", "from mssl.cli import main; main()", "prepare", str(source), "--out", str(cache), "--spacing", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.monotonic() + 120
    while done == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        if (cache / INDEX_NAME).is_file():
            done = len(json.loads((cache / INDEX_NAME).read_text(encoding="utf-8"))["cases"])
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < done < count, f"the kill should land mid-run, after {done} of {count} cases"

    interrupted = CacheIndex.open(cache)  # the index after a kill is complete and valid
    assert 0 < len(interrupted) < count
    for case in interrupted.cases:
        assert np.asarray(interrupted.image(case.case_id)).shape[1:] == tuple(case.shape)

    resumed = prepare(source, cache, preset)
    assert len(resumed.unchanged) == len(interrupted) and len(resumed.written) == count - len(interrupted)
    reference = tmp_path / "reference"
    prepare(source, reference, preset)
    assert _arrays(cache) == _arrays(reference)
    assert not list(cache.rglob("*.tmp"))


def test_cli_help_lists_every_option() -> None:
    result = CliRunner().invoke(app, ["prepare", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--preset", "--spacing", "--out", "--workers", "--on-error", "--base-dir", "--a-min", "--channel-axis"):
        assert option in result.output


def test_cli_reports_bad_files_and_exit_codes(tmp_path: Path) -> None:
    source = _source(tmp_path / "src", 1)
    (source / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"\0" * 40)
    runner = CliRunner()
    skip = runner.invoke(app, ["prepare", str(source), "--out", str(tmp_path / "a"), "--spacing", "2,2,2"])
    assert skip.exit_code == 0, skip.output
    assert f"{source / 'broken.nii.gz'}: " in skip.output and "1 written, 0 unchanged, 1 failed" in skip.output
    stop = runner.invoke(app, ["prepare", str(source), "--out", str(tmp_path / "b"), "--on-error", "stop"])
    assert stop.exit_code == 1 and "stopped" in stop.output
    empty = runner.invoke(app, ["prepare", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")])
    assert empty.exit_code == 1 and "does not exist" in empty.output
    bad_preset = runner.invoke(app, ["prepare", str(source), "--out", str(tmp_path / "d"), "--a-min", "5", "--a-max", "1"])
    assert bad_preset.exit_code == 2 and "a_min" in bad_preset.output


def _prepare_in_subprocess(source: str, cache: str) -> tuple[list[str], list[str]]:
    report = prepare(source, cache, PRESET)
    return report.written, report.unchanged


@pytest.mark.slow
def test_concurrent_prepares_of_one_cache_take_turns(tmp_path: Path) -> None:
    """Two processes preparing the same cache (parallel benchmark streams) both succeed: one writes every
    case, the other waits on the lock and finds them unchanged; the cache equals a serial one."""
    source = _source(tmp_path / "src", 4)
    cache = tmp_path / "shared"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_prepare_in_subprocess, [str(source)] * 2, [str(cache)] * 2))
    written = sorted(case for w, _ in results for case in w)
    unchanged = sorted(case for _, u in results for case in u)
    assert written == unchanged == ["case00", "case01", "case02", "case03"]
    prepare(source, tmp_path / "serial", PRESET)
    assert _arrays(cache) == _arrays(tmp_path / "serial")
    assert not list(cache.rglob("*.tmp"))
