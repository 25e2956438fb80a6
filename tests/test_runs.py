"""mssl.runs owns the layout of run folders: no other module names a file in them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from mssl import runs
from mssl.runs import EvaluationFolder, ExportFolder, FinetuneRun, PretrainRun, ProbeFolder, sidecar_of

SOURCE = Path(runs.__file__).parent


def _file_names() -> set[str]:
    """Every file name the layout classes hand out (folders aside: ``export`` is also a command's name)."""
    names = set(runs.EXPORT_FILES.values())
    for layout in (PretrainRun, FinetuneRun, ExportFolder, EvaluationFolder, ProbeFolder):
        folder = layout(Path("RUN"))
        for attribute, value in vars(layout).items():
            if isinstance(value, property):
                path = getattr(folder, attribute)
                names.add(getattr(path, "path", path).name)
    return {name for name in names if "." in name}


def test_layout_of_a_pretraining_run() -> None:
    run = PretrainRun("runs/s2dc")
    assert run.config == Path("runs/s2dc/config.yaml")
    assert run.checkpoint == Path("runs/s2dc/checkpoints/last.ckpt")
    assert run.metrics == Path("runs/s2dc/logs/metrics.csv") and run.probes == Path("runs/s2dc/logs/probes.csv")
    assert run.export.encoder == Path("runs/s2dc/export/encoder.safetensors")
    assert sidecar_of(run.export.encoder) == Path("runs/s2dc/export/encoder.json")
    assert run.export.weights("nnunet") == Path("runs/s2dc/export/nnunet_pretrained.pth")


def test_layout_of_a_finetuning_run() -> None:
    run = FinetuneRun("ft")
    assert (run.model, run.weights, run.result, run.checkpoint) == tuple(
        Path("ft") / name for name in ("model.json", "best.safetensors", "result.json", "last.ckpt")
    )
    assert run.evaluation("test").summary == Path("ft/evaluation/test/summary.json")


def test_periodic_checkpoints_are_listed_newest_first(tmp_path: Path) -> None:
    run = PretrainRun(tmp_path)
    run.checkpoints.mkdir()
    for step in (2, 10, 4):
        (run.checkpoints / f"{runs.PERIODIC_CHECKPOINT_FORMAT.format(step=step)}{runs.CHECKPOINT_SUFFIX}").touch()
    run.checkpoint.touch()
    assert [p.name for p in run.periodic_checkpoints()] == ["step-0000010.ckpt", "step-0000004.ckpt", "step-0000002.ckpt"]


def test_names_lightning_writes_are_the_layouts() -> None:
    assert runs.METRICS_FILE == ExperimentWriter.NAME_METRICS_FILE
    assert runs.LAST_CHECKPOINT_NAME == ModelCheckpoint.CHECKPOINT_NAME_LAST


def test_an_unknown_export_format_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown export format 'onnx'"):
        ExportFolder("out").weights("onnx")


def test_no_other_module_names_a_file_of_a_run_folder() -> None:
    names = _file_names()
    assert {"config.yaml", "last.ckpt", "encoder.safetensors", "model.json", "best.safetensors", "result.json", "metrics.csv"} <= names
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path == Path(runs.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = node.value.replace("\\", "/").split("/")
                if parts[-1] in names:
                    found.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.value!r}")
    assert not found, f"run-folder file names outside mssl/runs.py: {found}"
