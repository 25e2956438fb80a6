"""Every item of the bad-input corpus (tests/bad_inputs.py) ends in one line naming the problem, never a traceback."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from bad_inputs import (
    TINY_GVSL,
    PlantsMarker,
    dicom_series_folders,
    label_files,
    sidecar_files,
    symlink_loops,
    synthetic_cache,
    weight_files,
)
from conftest import TINY_UNET_CHANNELS
from data_helpers import synthetic_ct, write_nifti
from typer.testing import CliRunner

import mssl
from mssl.cli import app
from mssl.data.cache import CacheIndex
from mssl.data.errors import DataError
from mssl.data.prepare import prepare
from mssl.data.preprocess import PresetConfig, build_transforms
from mssl.data.sources import find_cases
from mssl.downstream.pretrained import describe_weights, load_encoder
from mssl.methods import METHODS
from mssl.models.backbones import UNetBackbone
from mssl.train.run_lock import HOLDER_NAME
from mssl.weights.checks import nonfinite_names
from mssl.weights.loading import load_pretrained

runner = CliRunner()
DEMO_DATASET = Path(mssl.__file__).parent / "data" / "demo" / "dataset.json"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("weights")
    return root, weight_files(root)


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_bad_weight_files_are_refused_by_load_pretrained_inspect_and_finetune(weights) -> None:
    root, expected = weights
    for name, message in expected.items():
        network = UNetBackbone(1, TINY_UNET_CHANNELS)
        before = {k: v.clone() for k, v in network.state_dict().items()}
        if name == "huge":  # the claim is the sidecar's: fine-tuning refuses it before building a network
            with pytest.raises(ValueError, match=re.escape(message)):
                describe_weights(root / name)
        else:
            with pytest.raises(ValueError, match=re.escape(message)):
                load_pretrained(network, root / name)
            with pytest.raises(ValueError, match=f"{name}: "):
                load_encoder(network, root / name)  # how `mssl finetune --weights` loads
        assert all(torch.equal(v, network.state_dict()[k]) for k, v in before.items()), name  # nothing half-loaded
        line = _one_line_error(runner.invoke(app, ["inspect", str(root / name), "--into", "unet"]))
        assert name in line and message in line, line
    assert not (root / "pwned").exists()  # the pickle payload never ran
    assert load_pretrained(UNetBackbone(1, TINY_UNET_CHANNELS), root / "good.safetensors").ok


def test_damaged_or_hostile_sidecars_are_one_line_errors(tmp_path) -> None:
    for name, message in sidecar_files(tmp_path).items():
        with pytest.raises(ValueError, match=re.escape(message)):
            describe_weights(tmp_path / name)  # the first thing `mssl finetune --weights` reads
        if name != "bad_preset":  # inspect reads no preset
            line = _one_line_error(runner.invoke(app, ["inspect", str(tmp_path / name)]))
            assert f"{name}/encoder.json: " in line and message in line, line


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_cache(tmp_path_factory.mktemp("synthetic"))


def _diverge_after(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """GVSL whose weights turn NaN once optimiser step ``step`` is done, while its loss stays finite."""
    real = METHODS["gvsl"]

    def build(backbone, config):
        method = real(backbone, config)
        original = method.after_optimizer_step

        def after_optimizer_step(done: int, max_steps: int) -> None:
            original(done, max_steps)
            if done >= step:
                with torch.no_grad():
                    next(method.backbone.parameters()).fill_(float("nan"))

        method.after_optimizer_step = after_optimizer_step
        return method

    monkeypatch.setitem(METHODS, "gvsl", build)


def test_a_diverged_run_stops_without_writing_and_keeps_the_last_finite_checkpoint(cache, tmp_path, monkeypatch) -> None:
    _diverge_after(monkeypatch, step=3)
    run = tmp_path / "run"
    flags = [*TINY_GVSL, "--data", str(cache), "--out", str(run), "--steps", "6", "--checkpoint-every", "2"]
    line = _one_line_error(runner.invoke(app, ["pretrain", *flags]), code=1)
    assert "step 4: the weights or optimiser state hold NaN/inf" in line and "method.backbone.encoders.0.0.weight" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-0000002.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and not nonfinite_names({k: last[k] for k in ("state_dict", "optimizer_states")})
    assert not (run / "summary.json").exists()


def test_export_refuses_a_nan_checkpoint(cache, tmp_path) -> None:
    run = tmp_path / "run"
    flags = [*TINY_GVSL, "--data", str(cache), "--out", str(run), "--steps", "1"]
    assert runner.invoke(app, ["pretrain", *flags]).exit_code == 0
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["state_dict"]["method.backbone.encoders.1.0.bias"][3] = float("inf")
    torch.save(checkpoint, last)
    line = _one_line_error(runner.invoke(app, ["export", str(run)]))
    assert f"{last}: NaN/inf values in 1 tensor (encoders.1.0.bias)" in line
    assert not (run / "export").exists()


def test_labels_that_are_not_class_numbers_are_named_at_prepare_and_dataset_load(tmp_path) -> None:
    expected = label_files(tmp_path)
    report = prepare(tmp_path / "list.json", tmp_path / "cache", PresetConfig(name="ct"))
    assert report.written == ["image"]  # the good label
    failures = {Path(path).name: problem for path, problem in report.failed}
    assert failures.keys() == expected.keys()
    for name, problem in failures.items():
        assert expected[name] in problem and "\n" not in problem, problem
    transforms = build_transforms(PresetConfig(name="ct"), with_label=True)  # what downstream datasets load through
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps a transform's error
        transforms({"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "half.nii.gz")})
    assert isinstance(failure.value.__cause__, DataError)
    assert str(failure.value.__cause__).endswith("half.nii.gz: label values must be integers; 7680 voxels are not (e.g. 0.5, 1.5, 2.5)")


@pytest.mark.parametrize("on_error", ["skip", "stop"])
def test_a_damaged_dicom_series_is_an_error_never_a_shorter_volume(tmp_path, on_error) -> None:
    expected = dicom_series_folders(tmp_path / "src")
    report = prepare(tmp_path / "src", tmp_path / "cache", PresetConfig(name="ct"), on_error=on_error)
    failures = {Path(path).name: problem for path, problem in report.failed}
    for name, problem in failures.items():
        assert expected[name] in problem and "\n" not in problem, problem
    if on_error == "skip":
        assert report.written == ["good"] and failures.keys() == expected.keys()
        assert CacheIndex.open(tmp_path / "cache").case("good").record["original_shape"] == [24, 20, 16]
    else:
        assert report.stopped and len(failures) == 1


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != HOLDER_NAME}


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock until it is killed."""
    code = "import sys, time; from mssl.train.run_lock import run_lock; held = run_lock(sys.argv[1]); held.__enter__(); print('held', flush=True); time.sleep(300)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_folder_has_one_writer_and_a_dead_holder_frees_it(cache, tmp_path) -> None:
    run = tmp_path / "run"
    flags = [*TINY_GVSL, "--data", str(cache), "--out", str(run)]
    assert runner.invoke(app, ["pretrain", *flags, "--steps", "1"]).exit_code == 0
    holder = _hold_lock(run)
    written = _snapshot(run)
    try:
        line = _one_line_error(runner.invoke(app, ["pretrain", *flags, "--steps", "2", "--resume"]))
        assert f"{run}: in use by process {holder.pid} on " in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert written == _snapshot(run)  # the refused run touched nothing
    result = runner.invoke(app, ["pretrain", *flags, "--steps", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2


def test_finetune_into_a_folder_another_process_writes_is_refused(tmp_path) -> None:
    holder = _hold_lock(tmp_path / "ft")
    try:
        result = runner.invoke(app, ["finetune", "--data", str(DEMO_DATASET), "--out", str(tmp_path / "ft"), "--steps", "1"])
        assert f"{tmp_path / 'ft'}: in use by process {holder.pid} on " in _one_line_error(result)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_globs_and_folder_walks_survive_symlink_loops(tmp_path) -> None:
    symlink_loops(tmp_path / "src")
    for source in (str(tmp_path / "src" / "**" / "*.nii.gz"), str(tmp_path / "src")):
        found: list[list[str]] = []
        # a daemon thread with a deadline: the walk this guards against never returns
        walker = threading.Thread(target=lambda: found.append(sorted(c.case_id for c in find_cases(source))), daemon=True)
        walker.start()
        walker.join(timeout=60)
        assert not walker.is_alive(), f"{source}: still walking after 60 s"
        assert found == [["deep", "top"]], source


def test_resume_falls_back_from_a_truncated_or_planted_last_checkpoint(cache, tmp_path, caplog) -> None:
    run = tmp_path / "run"
    flags = [*TINY_GVSL, "--data", str(cache), "--out", str(run), "--checkpoint-every", "2"]
    assert runner.invoke(app, ["pretrain", *flags, "--steps", "4"]).exit_code == 0
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a disk that filled up mid-copy
    result = runner.invoke(app, ["pretrain", *flags, "--steps", "5", "--resume"])
    assert result.exit_code == 0, result.output
    assert f"{last} is unreadable, skipped" in caplog.text
    assert f"resuming from {run / 'checkpoints' / 'step-0000004.ckpt'} (step 4), the newest intact checkpoint" in caplog.text
    assert torch.load(last, weights_only=True)["global_step"] == 5
    caplog.clear()
    torch.save({"global_step": 9, "evil": PlantsMarker(str(tmp_path / "pwned"))}, last)
    result = runner.invoke(app, ["pretrain", *flags, "--steps", "6", "--resume"])
    assert result.exit_code == 0, result.output
    assert f"{last} refused and skipped: it needs pickled code" in caplog.text and "(step 4)" in caplog.text
    assert not (tmp_path / "pwned").exists()
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_a_crop_the_backbone_cannot_take_is_a_config_error_before_training(cache, tmp_path) -> None:
    result = runner.invoke(app, ["pretrain", *TINY_GVSL, "--roi", "30", "--data", str(cache), "--out", str(tmp_path / "run")])
    line = _one_line_error(result)
    assert "config key 'gvsl': roi (30, 30, 30) is not a multiple of the unet backbone's stride 4 on every axis (e.g. (28, 28, 28)); set --roi" in line
    assert not (tmp_path / "run").exists()


def _refuse(monkeypatch: pytest.MonkeyPatch, name: str, error: int, under: Path) -> None:
    """Make ``os.<name>`` fail with ``error`` for paths under ``under`` (a read-only folder, a full disk)."""
    real = getattr(os, name)

    def refused(target, *args, **kwargs):
        where = target if isinstance(target, (str, Path)) else under  # fsync takes a descriptor
        if Path(where).is_relative_to(under):
            raise OSError(error, os.strerror(error), None if isinstance(target, int) else str(target))
        return real(target, *args, **kwargs)

    monkeypatch.setattr(os, name, refused)


def test_prepare_or_pretrain_into_a_folder_it_cannot_write_is_one_line_exit_1(cache, tmp_path, monkeypatch) -> None:
    write_nifti(tmp_path / "src" / "a.nii.gz", synthetic_ct((24, 20, 16))[0])
    _refuse(monkeypatch, "mkdir", errno.EACCES, tmp_path / "out")
    line = _one_line_error(runner.invoke(app, ["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "out" / "cache")]), code=1)
    assert line == f"error: {tmp_path / 'out' / 'cache'}: Permission denied"
    line = _one_line_error(runner.invoke(app, ["pretrain", *TINY_GVSL, "--data", str(cache), "--out", str(tmp_path / "out" / "run")]), code=1)
    assert line == f"error: {tmp_path / 'out' / 'run'}: Permission denied"


def test_a_full_disk_during_prepare_stops_with_one_line_and_keeps_the_cache(tmp_path, monkeypatch) -> None:
    hu = synthetic_ct((24, 20, 16))[0]
    write_nifti(tmp_path / "src" / "a.nii.gz", hu)
    cache = tmp_path / "cache"
    assert runner.invoke(app, ["prepare", str(tmp_path / "src"), "--out", str(cache)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    write_nifti(tmp_path / "src" / "b.nii.gz", hu)
    _refuse(monkeypatch, "fsync", errno.ENOSPC, cache)  # every write into the cache hits a full disk
    line = _one_line_error(runner.invoke(app, ["prepare", str(tmp_path / "src"), "--out", str(cache), "--workers", "1"]), code=1)
    assert line == f"error: {cache}: No space left on device"
    after = {p.name: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    assert after == before  # the index and arrays as they were; no temporary left taking space


def test_a_deleted_source_leaves_the_cache_on_the_next_prepare(tmp_path) -> None:
    hu = synthetic_ct((24, 20, 16))[0]
    for name in ("kept", "deleted"):
        write_nifti(tmp_path / "src" / f"{name}.nii.gz", hu)
    cache = tmp_path / "cache"
    prepare(tmp_path / "src", cache, PresetConfig(name="ct"))
    arrays = [cache / CacheIndex.open(cache).case("deleted").record[key] for key in ("image_file", "foreground_file")]
    (tmp_path / "src" / "deleted.nii.gz").unlink()
    report = prepare(tmp_path / "src", cache, PresetConfig(name="ct"))
    assert report.removed == ["deleted"] and report.unchanged == ["kept"]
    assert "0 written, 1 unchanged, 0 failed, 1 removed (source gone)" in report.summary()
    assert [case.case_id for case in CacheIndex.open(cache).cases] == ["kept"]
    assert not any(path.exists() for path in arrays)
