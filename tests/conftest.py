"""Shared fixtures: seeding, the real-data folder, small threads."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(os.environ.get("MSSL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))

# Two pytest-xdist workers share two cores: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _dataset(name: str) -> Path:
    root = SHARED_DATA / name
    if not (root / "dataset.json").is_file():
        pytest.skip(f"real data not available: {root}")
    return root


@pytest.fixture
def openkbp_dir() -> Path:
    """../shared/data/openkbp (skips the test when absent)."""
    return _dataset("openkbp")


@pytest.fixture
def ixi_dir() -> Path:
    """../shared/data/ixi (skips the test when absent)."""
    return _dataset("ixi")
