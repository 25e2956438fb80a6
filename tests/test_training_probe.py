"""Probes during pre-training and probes of the decoder, on the embedded demo CTs (no ../shared/data needed).

One tiny GVSL run with probes is shared: it must probe at the right steps, train exactly as the same run
without probes, report at step 0 what `mssl probe` says of a random encoder, and continue its curve
unchanged through a resume.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch

import mssl
from mssl.config import ConfigError
from mssl.data.demo import demo_datalist
from mssl.data.preprocess import PresetConfig

SPACING = (8.0, 8.0, 8.0)  # mm: demo CTs become ~30×50×40 voxels
SEED = 3
TINY_UNET = {"name": "unet", "unet_channels": [8, 16, 32]}
PROBE_SIZES = {"train_cases": 2, "test_cases": 1, "voxels_per_class": 200, "fit_steps": 30, "patch": 8}
STEPS, EVERY = 6, 4  # probes at 0, 4 and the last step 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo datalist and a coarse cache of its train split."""
    root = tmp_path_factory.mktemp("probe_demo")
    datalist = demo_datalist(root / "dataset.json")
    mssl.prepare(datalist, root / "cache", PresetConfig(name="ct", spacing=SPACING), workers=1, progress=False)
    return datalist, root / "cache"


def _pretrain(demo: tuple[Path, Path], out: Path, probe: bool = True, steps: int = STEPS, **options: Any) -> Path:
    datalist, cache = demo
    probe_options = {"probe": datalist, "probe_every": EVERY, **{f"probe.{k}": v for k, v in PROBE_SIZES.items()}} if probe else {}
    return mssl.pretrain(
        method="gvsl", data=cache, split="train", out=out, backbone=TINY_UNET, roi=32, steps=steps, seed=SEED,
        workers=0, log_every=1, progress_bar=False, **probe_options, **options,
    )


def _history(run: Path) -> list[dict[str, Any]]:
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return checkpoint["callbacks"]["TrainingProbe"]["history"]


@pytest.fixture(scope="module")
def probed_run(demo: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pretrain(demo, tmp_path_factory.mktemp("probed") / "run")


def test_probes_run_at_step_0_every_n_steps_and_the_last_step(probed_run: Path) -> None:
    history = _history(probed_run)
    assert [record["step"] for record in history] == [0, 4, 6]
    with (probed_run / "logs" / "probes.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == [0, 4, 6]
    assert float(rows[-1]["probe/mean_dice"]) == pytest.approx(history[-1]["mean_dice"])
    assert float(rows[0]["probe/dice/Mandible"]) == pytest.approx(history[0]["dice"]["Mandible"])
    assert all(0 <= record["knn_accuracy"] <= 1 for record in history)
    assert any((probed_run / "logs").glob("events.out.tfevents.*"))


def test_probes_do_not_change_the_training_trajectory(demo: tuple[Path, Path], probed_run: Path, tmp_path: Path) -> None:
    plain = _pretrain(demo, tmp_path / "plain", probe=False)
    with_probes = torch.load(probed_run / "checkpoints" / "last.ckpt", weights_only=True)
    without = torch.load(plain / "checkpoints" / "last.ckpt", weights_only=True)
    assert with_probes["global_step"] == without["global_step"] == STEPS
    assert with_probes["state_dict"].keys() == without["state_dict"].keys()
    for key, value in without["state_dict"].items():
        assert torch.equal(with_probes["state_dict"][key], value), key
    for (_, a), (_, b) in zip(sorted(with_probes["optimizer_states"][0]["state"].items()), sorted(without["optimizer_states"][0]["state"].items())):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_step_0_equals_mssl_probe_of_a_random_encoder(demo: tuple[Path, Path], probed_run: Path) -> None:
    from mssl.downstream.probe import probe

    datalist, _ = demo
    result = probe(data=datalist, backbone=TINY_UNET, seed=SEED, preset="ct", spacing=SPACING, **PROBE_SIZES)
    step_0 = _history(probed_run)[0]
    assert result.random is not None and result.random.dice == step_0["dice"]
    assert result.random.mean_dice == step_0["mean_dice"] and result.random.knn_accuracy == step_0["knn_accuracy"]


def test_resume_continues_the_curve_with_its_history_intact(demo: tuple[Path, Path], probed_run: Path, tmp_path: Path) -> None:
    run = _pretrain(demo, tmp_path / "run", steps=EVERY, checkpoint_every=EVERY)
    before = _history(run)
    assert [record["step"] for record in before] == [0, EVERY]
    mssl.pretrain(out=run, resume=True, steps=STEPS)
    after = _history(run)
    assert after[: len(before)] == before
    # the continued curve is the uninterrupted run's: same steps, same scores
    uninterrupted = _history(probed_run)
    assert [r["step"] for r in after] == [r["step"] for r in uninterrupted]
    for resumed, reference in zip(after, uninterrupted):
        assert resumed["dice"] == reference["dice"] and resumed["knn_accuracy"] == reference["knn_accuracy"]
    with (run / "logs" / "probes.csv").open(newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [0, EVERY, STEPS]


def test_probing_a_decoder_needs_a_method_that_trains_one(demo: tuple[Path, Path], tmp_path: Path) -> None:
    from mssl.train.pretrain import resolve_config

    datalist, cache = demo
    with pytest.raises(ConfigError, match="probe.features"):
        resolve_config(method="s2dc", data=cache, out=tmp_path, probe=datalist, **{"probe.features": "decoder"})
    assert resolve_config(method="gvsl", data=cache, out=tmp_path, probe=datalist, **{"probe.features": "decoder"}).probe.features == "decoder"


def test_a_missing_probe_datalist_is_one_config_error(demo: tuple[Path, Path], tmp_path: Path) -> None:
    _, cache = demo
    with pytest.raises(ConfigError, match="probe.data.*missing.json"):
        _pretrain((tmp_path / "missing.json", cache), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
