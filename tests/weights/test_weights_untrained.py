"""A tensor that left pre-training bit-identical to its initialisation is reported as not trained."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mssl.runs import PretrainRun
from mssl.weights.fingerprints import fingerprint, untrained_keys, write_initial_fingerprints


def test_unchanged_tensors_are_found_and_the_first_fingerprints_are_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    initial = {"a": torch.randn(3, 4), "b": torch.randn(5), "c": torch.zeros(2, dtype=torch.int64)}
    write_initial_fingerprints(initial, tmp_path)
    trained = {**initial, "a": initial["a"] + 1e-7}  # one update, however small, counts as trained
    assert untrained_keys(trained, tmp_path) == ["b", "c"]
    write_initial_fingerprints(trained, tmp_path)  # a resumed run must not forget its starting point
    assert json.loads(PretrainRun(tmp_path).initial_fingerprints.read_text())["a"] == fingerprint(initial["a"])
    assert untrained_keys(trained, tmp_path / "old_run") is None  # runs without fingerprints: unknown, not "all trained"


def test_fingerprints_see_dtype_and_shape() -> None:
    x = torch.zeros(4)
    assert fingerprint(x) == fingerprint(torch.zeros(4))
    assert fingerprint(x) != fingerprint(torch.zeros(2, 2)) and fingerprint(x) != fingerprint(torch.zeros(4, dtype=torch.float64))
