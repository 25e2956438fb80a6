"""`mssl finetune`: cost plan and plain progress lines, --dry-run, a resumable last.ckpt, TensorBoard for classification."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from conftest import DEMO_DATA, TINY_UNET_CHANNELS, TINY_UNET_OPTIONS, demo_subset
from typer.testing import CliRunner

from mssl.cli import app
from mssl.train.cost import MEASURED_STEPS, WARMUP_STEPS

TINY = {"backbone": TINY_UNET_OPTIONS, "roi": (32, 32, 32), "spacing": (6.0, 6.0, 6.0), "batch_size": 1}


def _steps(metrics: Path) -> list[int]:
    with metrics.open(newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file)]


def _console() -> tuple[Console, io.StringIO]:
    text = io.StringIO()
    return Console(file=text, width=60), text  # narrower than a line: lines must not wrap


DEMO_PICKS = {"train": ("train", 0, 1), "validation": ("train", 1, 2)}  # two of the package's demo CTs


def test_segmentation_prints_lines_and_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune

    data = demo_subset(DEMO_DATA, tmp_path, DEMO_PICKS)
    console, text = _console()
    run = finetune(data=data, out=tmp_path / "run", steps=4, val_every=2, line_every_steps=1, postprocess=False, console=console, **TINY)
    lines = text.getvalue().splitlines()
    assert next(line for line in lines if line.startswith("plan: ")).endswith("· 4 steps")
    assert [line.split(" · ")[0] for line in lines if line.startswith("step ") and " · loss " in line] == [f"step {s}/4" for s in range(1, 5)]
    assert torch.load(run / "last.ckpt", weights_only=True)["loop"]["step"] == 4

    console, text = _console()
    finetune(data=data, out=run, steps=6, val_every=2, line_every_steps=1, postprocess=False, resume=True, console=console, **TINY)
    assert [line.split(" · ")[0] for line in text.getvalue().splitlines() if " · loss " in line] == ["step 5/6", "step 6/6"]
    assert _steps(run / "metrics.csv") == list(range(7))  # step 0 = initial validation; every step once
    with (run / "metrics.csv").open(newline="") as file:
        lr = {int(row["step"]): float(row["lr"]) for row in csv.DictReader(file) if row["lr"]}
    assert lr[5] > 0.0 == lr[6]  # the poly schedule spans the 6 steps of the resumed run, not the 4 of the first
    state = torch.load(run / "last.ckpt", weights_only=True)
    assert state["loop"]["step"] == 6 and len(state["loop"]["history"]) == 4  # validations at 0, 2, 4, 6
    assert all(int(moments["step"]) == 6 for moments in state["optimizer"]["state"].values())  # Adam moments continued
    assert state["schedule"]["last_epoch"] == 6
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    assert result["steps"] == 6 and len(result["validation_history"]) == 4


def test_segmentation_dry_run_projects_and_writes_nothing(tmp_path: Path) -> None:
    data = demo_subset(DEMO_DATA, tmp_path, DEMO_PICKS)
    out = tmp_path / "run"
    arguments = ["finetune", "--data", str(data), "--out", str(out), "--backbone", "unet", "--unet-channels", ",".join(map(str, TINY_UNET_CHANNELS)), "--roi", "32",
                 "--spacing", "6,6,6", "--batch-size", "1", "--steps", "1000", "--val-every", "100", "--dry-run"]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "per step: 1 crop (1 × 32×32×32), 32.77 k voxels · 1,000 steps" in result.output
    assert f"dry run: {WARMUP_STEPS + MEASURED_STEPS} steps run" in result.output
    projection = next(line for line in result.output.splitlines() if line.startswith("projection: "))
    assert "1,000 steps ×" in projection and "+ 11 validations ×" in projection  # step 0, 100, ..., 1000
    assert not out.exists()


@pytest.mark.realdata
def test_classification_writes_tensorboard_and_resumes(ixi_dir: Path, tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune

    meta = json.loads((ixi_dir / "dataset.json").read_text(encoding="utf-8"))
    entries = [{**e, "image": str(ixi_dir / e["image"]), "label": str(ixi_dir / e["label"]), "split": split}
               for e, split in zip(meta["training"], ["train", "train", "validation"])]
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({**meta, "training": entries}), encoding="utf-8")
    options = {**TINY, "task": "cls", "target": "sex", "spacing": (8.0, 8.0, 8.0), "val_every": 2, "line_every_steps": 1}
    console, text = _console()
    run = finetune(data=data, out=tmp_path / "cls", steps=2, console=console, **options)
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    assert "step 2/2 · loss " in text.getvalue()
    console, text = _console()
    finetune(data=data, out=run, steps=3, resume=True, console=console, **options)
    assert [line.split(" · ")[0] for line in text.getvalue().splitlines() if " · loss " in line and "validation" not in line] == ["step 3/3"]
    assert _steps(run / "metrics.csv") == [1, 2, 3]
    state = torch.load(run / "last.ckpt", weights_only=True)
    assert state["loop"]["step"] == 3 and all(int(m["step"]) == 3 for m in state["optimizer"]["state"].values())
