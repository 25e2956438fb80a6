"""Probes during pre-training and probes of the decoder, on the embedded demo CTs (no ../shared/data needed).

One tiny GVSL run with probes is shared: it must probe at the right steps, train exactly as the same run
without probes, report at step 0 what `mssl probe` says of a random encoder, and continue its curve
unchanged through a resume.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import TINY_UNET_OPTIONS
import mssl
from mssl.config import ConfigError
from mssl.data.demo import demo_datalist
from mssl.data.preprocess import PresetConfig

SPACING = (8.0, 8.0, 8.0)  # mm: demo CTs become ~30×50×40 voxels
SEED = 3
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
        method="gvsl", data=cache, split="train", out=out, backbone=TINY_UNET_OPTIONS, roi=32, steps=steps, seed=SEED,
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
    assert torch.equal(with_probes["mssl"]["rng"]["torch"], without["mssl"]["rng"]["torch"])  # the RNG snapshot resume restores
    for key, value in without["state_dict"].items():
        assert torch.equal(with_probes["state_dict"][key], value), key
    for (_, a), (_, b) in zip(sorted(with_probes["optimizer_states"][0]["state"].items()), sorted(without["optimizer_states"][0]["state"].items())):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_step_0_equals_mssl_probe_of_a_random_encoder(demo: tuple[Path, Path], probed_run: Path) -> None:
    from mssl.downstream.probe import probe

    datalist, _ = demo
    result = probe(data=datalist, backbone=TINY_UNET_OPTIONS, seed=SEED, preset="ct", spacing=SPACING, **PROBE_SIZES)
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


def test_a_probe_leaves_rng_states_and_module_modes_as_it_found_them(demo: tuple[Path, Path], tmp_path: Path) -> None:
    from mssl.data.cache import CacheIndex
    from mssl.downstream.training_probe import TrainingProbe
    from mssl.models.backbones import build_backbone
    from mssl.train.pretrain import resolve_config

    datalist, cache = demo
    cfg = resolve_config(method="gvsl", data=cache, out=tmp_path, backbone=TINY_UNET_OPTIONS, roi=32, probe=datalist, **{f"probe.{k}": v for k, v in PROBE_SIZES.items()})
    callback = TrainingProbe.from_config(cfg, CacheIndex.open(cache).preset, tmp_path)
    backbone = build_backbone(cfg.backbone).train()
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    callback.probe_backbone(backbone)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert all(module.training for module in backbone.modules())


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


def test_the_training_engine_refuses_probes_it_was_not_given(demo: tuple[Path, Path], tmp_path: Path) -> None:
    """``mssl.pretrain`` hands the probe callback to ``train/``; called directly, train/ must not skip the probes silently."""
    from mssl.train.pretrain import pretrain

    datalist, cache = demo
    with pytest.raises(ConfigError, match="probe.data.*mssl.pretrain"):
        pretrain(method="gvsl", data=cache, out=tmp_path / "run", backbone=TINY_UNET_OPTIONS, roi=32, steps=1, probe=datalist)
    assert not (tmp_path / "run").exists()


def test_visualize_draws_the_probe_curve_next_to_the_losses(probed_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from mssl.viz.curves import FIGURE_DPI, PANEL_COLUMNS, plot_curves, read_metrics, read_probes

    probes = read_probes(probed_run)
    assert probes["mean_dice"][0].tolist() == [0, 4, 6] and "dice/Mandible" in probes and "knn" in probes
    path = plot_curves(probed_run, tmp_path / "curves.png")
    panels = len(read_metrics(probed_run)) + 2  # the losses, then probe Dice and probe patch accuracy
    with Image.open(path) as image:
        assert image.height == round(2.8 * -(-panels // PANEL_COLUMNS) * FIGURE_DPI)


# ------------------------------------------------------------------ mssl probe --features encoder|decoder


@pytest.fixture(scope="module")
def gvsl_export(probed_run: Path) -> Path:
    return mssl.export(probed_run, probed_run / "export")


def test_decoder_probe_of_a_gvsl_export_reports_the_features_it_used(demo: tuple[Path, Path], gvsl_export: Path, tmp_path: Path) -> None:
    from mssl.downstream.probe import probe

    datalist, _ = demo
    decoder = probe(weights=gvsl_export, data=datalist, features="decoder", out=tmp_path, **PROBE_SIZES)
    encoder = probe(weights=gvsl_export, data=datalist, features="encoder", random_baseline=False, **PROBE_SIZES)
    assert decoder.features == "decoder" and encoder.features == "encoder"
    assert decoder.pretrained is not None and encoder.pretrained is not None and decoder.random is not None
    assert decoder.pretrained.dice != encoder.pretrained.dice
    assert "last decoder map" in (tmp_path / "probe.md").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "probe.json").read_text(encoding="utf-8"))["features"] == "decoder"


def test_decoder_probe_of_an_encoder_only_pretraining_is_one_clear_error(demo: tuple[Path, Path], gvsl_export: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mssl.cli import app

    datalist, _ = demo
    # the same weights, declared as S²DC pre-training: its decoder never received a gradient
    s2dc = tmp_path / "encoder.safetensors"
    shutil.copy(gvsl_export, s2dc)
    sidecar = json.loads(gvsl_export.with_suffix(".json").read_text(encoding="utf-8"))
    s2dc.with_suffix(".json").write_text(json.dumps({**sidecar, "method": "s2dc"}), encoding="utf-8")
    result = CliRunner().invoke(app, ["probe", "--weights", str(s2dc), "--data", str(datalist), "--features", "decoder"])
    assert result.exit_code == 2
    assert "s2dc pre-training trains only the encoder" in result.output and "Traceback" not in result.output


def test_decoder_probe_needs_decoder_tensors_in_the_file(gvsl_export: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from mssl.downstream.pretrained import describe_weights, load_encoder
    from mssl.downstream.probe import check_decoder_trained
    from mssl.models.backbones import build_backbone

    encoder_only = tmp_path / "encoder.safetensors"
    save_file({k: v for k, v in load_file(str(gvsl_export)).items() if k.startswith("encoders.")}, str(encoder_only))
    shutil.copy(gvsl_export.with_suffix(".json"), encoder_only.with_suffix(".json"))
    info = describe_weights(encoder_only)
    network = build_backbone(info.backbone)
    with pytest.raises(ValueError, match="no decoder weights|has none for decoders"):
        check_decoder_trained(network, info, load_encoder(network, encoder_only))
    full = build_backbone(info.backbone)
    check_decoder_trained(full, describe_weights(gvsl_export), load_encoder(full, gvsl_export))  # GVSL trained it: no error
