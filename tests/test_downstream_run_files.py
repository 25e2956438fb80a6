"""A fine-tuned run's weights on disk: a diverged network never replaces the best weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mssl.downstream.networks import UNetSegmenter
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


def test_a_diverging_finetune_stops_with_one_line_and_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An infinite loss turns every weight NaN after the first step (gradients inf → clipped to NaN)."""
    import json

    from typer.testing import CliRunner

    from mssl.cli import app
    from mssl.data.demo import demo_datalist
    from mssl.downstream.partial_labels import PartialDiceCELoss

    meta = json.loads(demo_datalist(tmp_path / "source.json").read_text(encoding="utf-8"))
    train = [e for e in meta["training"] if e["split"] == "train"]
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({**meta, "training": [train[0], dict(train[1], split="validation")]}), encoding="utf-8")
    finite_loss = PartialDiceCELoss.forward
    monkeypatch.setattr(PartialDiceCELoss, "forward", lambda self, *args: finite_loss(self, *args) * float("inf"))

    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "finetune", "--data", str(data), "--backbone", "unet", "--unet-channels", "8,16", "--spacing", "8,8,8",
        "--roi", "16,16,16", "--steps", "2", "--val-every", "1", "--no-augment", "--out", str(out),
    ])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not written, the network diverged (NaN/inf in" in errors[0] and "Traceback" not in result.output
    assert not FinetuneRun(out).weights.exists()  # nothing was ever good enough to keep
