"""Shared fixtures: seeding, the real-data folder, small threads."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any

# Lightning binds its log handler to sys.stderr at import: import it now, not first inside a CliRunner.invoke
# whose stream is closed afterwards (a "Logging error" traceback in every later CLI test's output).
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import torch

from mssl.config import BackboneConfig

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


# Environment for tests that start `mssl` subprocesses: one intra-op thread (float reductions ordered
# identically run to run) and the allocator settings of DESIGN §10.
SUBPROCESS_ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "OMP_WAIT_POLICY": "PASSIVE",
}


# The tests' tiny U-Net (DESIGN §10): stride 4, a step on 32³ crops well under a second on one core.
TINY_UNET_CHANNELS = (8, 16, 32)
TINY_UNET = BackboneConfig(name="unet", unet_channels=TINY_UNET_CHANNELS)
TINY_UNET_OPTIONS = {"name": "unet", "unet_channels": TINY_UNET_CHANNELS}  # the same as a `backbone=` option
TINY_UNET_FLAGS = ["--backbone", "unet", "--set", f"backbone.unet_channels={list(TINY_UNET_CHANNELS)}"]  # and on the command line

# `mssl pretrain` flags for a tiny U-Net and tiny S²DC sizes (field, heads, queue, Sinkhorn) for CLI runs.
TINY_PRETRAIN_FLAGS = [
    *TINY_UNET_FLAGS, "--no-progress", "--log-every", "1",
    "--set", "s2dc.field_size=[64, 64, 32]", "--set", "s2dc.roi=32",
    "--set", "s2dc.head_hidden=32", "--set", "s2dc.head_out=16", "--set", "s2dc.queue_size=8", "--set", "s2dc.sinkhorn_iters=10",
]


# The twelve OpenKBP CTs (with labels) the package ships for its demo: engine and end-to-end tests run on
# them, so a plain clone tests everything; ../shared/data adds the real-data tests.
DEMO_DATA = Path(__file__).resolve().parents[1] / "src" / "mssl" / "data" / "demo"
TINY_CACHE_CASES = ("pt_119", "pt_132", "pt_201", "pt_22")
TINY_CACHE_GLOB = "pt_[12][0-3]*.nii.gz"  # exactly TINY_CACHE_CASES


@pytest.fixture(scope="session")
def tiny_ct_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four of the package's demo CTs through the real `prepare`, resampled coarsely so crops are cheap."""
    from mssl.data.prepare import prepare

    out = tmp_path_factory.mktemp("tiny_ct_cache")
    report = prepare(str(DEMO_DATA / "imagesTr" / TINY_CACHE_GLOB), out, "ct", spacing=(6.0, 6.0, 4.0))
    assert sorted(report.written) == sorted(TINY_CACHE_CASES)
    return out


@pytest.fixture
def openkbp_dir() -> Path:
    """../shared/data/openkbp (skips the test when absent)."""
    return _dataset("openkbp")


@pytest.fixture
def ixi_dir() -> Path:
    """../shared/data/ixi (skips the test when absent)."""
    return _dataset("ixi")


def write_random_export(folder: Path, backbone: dict) -> Path:
    """An export of a randomly initialised (seed 1) backbone with the sidecar `mssl export` writes; one channel
    unless ``backbone`` names ``in_channels``."""
    from mssl.config import BackboneConfig
    from mssl.data.preprocess import PresetConfig
    from mssl.models.backbones import build_backbone
    from mssl.runs import ExportFolder
    from mssl.weights.safe_io import write_safetensors
    from mssl.weights.sidecar import EncoderSidecar, write_sidecar

    config = BackboneConfig(**backbone)
    torch.manual_seed(1)
    weights = write_safetensors(build_backbone(config).state_dict(), ExportFolder(folder).weights("monai"), {})
    write_sidecar(EncoderSidecar(method="test", backbone=config, preset=PresetConfig(name="ct")), weights)
    return weights


def demo_subset(source: Path, out: Path, picks: dict[str, tuple[str, int, int]]) -> Path:
    """A dataset.json (absolute paths) whose split S holds entries [start, stop) of the source's split."""
    meta = json.loads((source / "dataset.json").read_text(encoding="utf-8"))
    chosen = []
    for split, (source_split, start, stop) in picks.items():
        entries = [e for e in meta["training"] if e.get("split") == source_split][start:stop]
        chosen += [{**e, "split": split, "image": str(source / e["image"]), "label": str(source / e["label"])} for e in entries]
    path = out / "dataset.json"
    path.write_text(json.dumps({**meta, "training": chosen}), encoding="utf-8")
    return path


# mssl.pretrain keywords of a tiny run (U-Net 8-16-32, 32³ crops, tiny S²DC sizes), for the engine tests.
TINY_PRETRAIN: dict[str, Any] = {
    "backbone": TINY_UNET_OPTIONS,
    "gvsl.roi": [32, 32, 32],
    "s2dc": {"field_size": [64, 64, 32], "roi": 32, "head_hidden": 32, "head_out": 16, "queue_size": 8, "sinkhorn_iters": 10},
    "workers": 0,
    "progress_bar": False,
    "log_every": 1,
}


def run_metrics(run: Path) -> list[dict[str, str]]:
    """The rows of a pre-training run's logs/metrics.csv."""
    with (run / "logs" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))
