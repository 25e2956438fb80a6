"""A fine-tuned run's weights on disk: a diverged network never replaces the best weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mssl.downstream.networks import UNetSegmenter
from mssl.downstream.run_files import WEIGHTS_FILE, save_weights
from mssl.weights.checks import BadWeightsError


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_and_the_previous_best_is_kept(tmp_path: Path, bad_value: float) -> None:
    network = UNetSegmenter(in_channels=1, num_classes=3, channels=(8, 16))
    path = save_weights(network, tmp_path)
    assert path == tmp_path / WEIGHTS_FILE
    before = _digest(path)
    saved = load_file(str(path))
    assert set(saved) == set(network.state_dict())
    torch.testing.assert_close(saved["head.weight"], network.head.weight.detach())

    with torch.no_grad():  # what a diverged optimiser step leaves behind
        network.head.weight[0, 0] = bad_value
        network.encoders[1][0].bias.fill_(bad_value)
    with pytest.raises(BadWeightsError) as refused:
        save_weights(network, tmp_path)
    message = str(refused.value)
    assert "\n" not in message and str(path) in message and "previous weights are kept" in message
    assert "2 tensors (encoders.1.0.bias, head.weight)" in message
    assert _digest(path) == before  # untouched, no temporary file left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE]


def test_the_first_save_of_a_diverged_network_writes_nothing(tmp_path: Path) -> None:
    network = UNetSegmenter(in_channels=1, num_classes=2, channels=(8, 16))
    with torch.no_grad():
        network.head.bias.fill_(float("nan"))
    with pytest.raises(BadWeightsError, match="head.bias"):
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
    assert _digest(path) == before and sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_FILE]
