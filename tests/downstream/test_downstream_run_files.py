"""A fine-tuned run's weights on disk: a diverged network never replaces the best weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mssl.models.task_networks import UNetSegmenter
from mssl.downstream.run_files import save_weights
from mssl.runs import FinetuneRun
from mssl.train.checkpoint import NonFiniteStateError


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_and_the_previous_best_is_kept(tmp_path: Path, bad_value: float) -> None:
    network = UNetSegmenter(in_channels=1, num_classes=3, channels=(8, 16))
    path = save_weights(network, tmp_path)
    assert path == FinetuneRun(tmp_path).weights
    before = _digest(path)
    saved = load_file(str(path))
    assert set(saved) == set(network.state_dict())
    torch.testing.assert_close(saved["head.weight"], network.head.weight.detach())

    with torch.no_grad():  # what a diverged optimiser step leaves behind
        network.head.weight[0, 0] = bad_value
        network.encoders[1][0].bias.fill_(bad_value)
    with pytest.raises(NonFiniteStateError) as refused:
        save_weights(network, tmp_path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "previous best weights are kept" in message
    assert "2 tensors (encoders.1.0.bias, head.weight)" in message
    assert _digest(path) == before  # untouched, no temporary file left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [FinetuneRun(tmp_path).weights.name]


def test_the_first_save_of_a_diverged_network_writes_nothing(tmp_path: Path) -> None:
    network = UNetSegmenter(in_channels=1, num_classes=2, channels=(8, 16))
    with torch.no_grad():
        network.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteStateError, match="head.bias"):
        save_weights(network, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_keeps_the_previous_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mssl.downstream.run_files as run_files

    network = UNetSegmenter(in_channels=1, num_classes=2, channels=(8, 16))
    path = save_weights(network, tmp_path)
    before = _digest(path)

    def full_disk(tensors: dict, filename: str) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_files, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_weights(network, tmp_path)
    assert _digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == [FinetuneRun(tmp_path).weights.name]


def _diverging_finetune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finite_steps: int, bad_value: float) -> tuple[object, Path, Path]:
    """`mssl finetune` of a tiny U-Net (1 training, 1 validation, 1 test case, validation every 2 of 4 steps) whose
    loss turns ``bad_value`` after ``finite_steps`` steps; returns the CLI result, the run folder and the datalist."""
    import json

    from typer.testing import CliRunner

    from mssl.cli import app
    from mssl.data.demo import demo_datalist
    from mssl.downstream import segmentation

    meta = json.loads(demo_datalist(tmp_path / "source.json").read_text(encoding="utf-8"))
    train = [e for e in meta["training"] if e["split"] == "train"]
    test = next(e for e in meta["training"] if e["split"] == "test")
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({**meta, "training": [train[0], dict(train[1], split="validation"), test]}), encoding="utf-8")
    finite_loss, steps = segmentation.deep_supervised_loss, []

    def loss(*args: object) -> torch.Tensor:  # called once per training step
        steps.append(len(steps) + 1)
        return finite_loss(*args) * (1.0 if len(steps) <= finite_steps else bad_value)

    monkeypatch.setattr(segmentation, "deep_supervised_loss", loss)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "finetune", "--data", str(data), "--backbone", "unet", "--unet-channels", "8,16", "--spacing", "8,8,8",
        "--roi", "16,16,16", "--steps", "4", "--val-every", "2", "--no-augment", "--out", str(out),
    ])
    return result, out, data


def _error_line(result: object) -> str:
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_a_finetune_diverging_before_any_validation_stops_with_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    result, out, _ = _diverging_finetune(tmp_path, monkeypatch, finite_steps=0, bad_value=float("inf"))
    line = _error_line(result)
    assert "the fine-tuning diverged at step 1 (loss inf)" in line and "no weights were kept" in line
    assert not FinetuneRun(out).weights.exists()  # nothing was ever good enough to keep
    outcome = json.loads(FinetuneRun(out).result.read_text(encoding="utf-8"))
    assert outcome["diverged"] == {"step": 1, "problem": "loss inf"} and outcome["steps"] == 0


def test_a_finetune_diverging_after_its_best_validation_leaves_an_evaluable_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN at step 3, after the validation of step 2 kept its weights: exit 1, and the run folder still
    describes and holds those weights, so `mssl evaluate` scores them."""
    import csv
    import json
    import math

    import mssl

    result, out, data = _diverging_finetune(tmp_path, monkeypatch, finite_steps=2, bad_value=float("nan"))
    files = FinetuneRun(out)
    line = _error_line(result)
    assert "the fine-tuning diverged at step 3 (loss nan)" in line and "keeps the best weights (step 2)" in line
    outcome = json.loads(files.result.read_text(encoding="utf-8"))
    assert outcome["diverged"] == {"step": 3, "problem": "loss nan"} and outcome["best_step"] == 2 and outcome["steps"] == 2
    with files.metrics.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"] and rows[-1]["loss"] == "nan"
    last = torch.load(files.checkpoint, weights_only=True)  # not overwritten by the diverged step
    assert last["loop"]["step"] == 2 and all(torch.isfinite(v).all() for v in last["network"].values() if v.is_floating_point())

    description = json.loads(files.model.read_text(encoding="utf-8"))
    assert description["task"] == "seg" and description["backbone"]["unet_channels"] == [8, 16]
    evaluation = mssl.evaluate(run=out, data=data, tta=False, out=tmp_path / "evaluation")
    assert math.isfinite(evaluation.scores["mean_dice"]) and evaluation.per_class
    assert all(bool(torch.isfinite(v).all()) for v in load_file(str(files.weights)).values() if v.is_floating_point())
