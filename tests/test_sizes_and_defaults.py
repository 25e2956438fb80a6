"""Sizes are checked before anything is written, and small or GVSL-only runs get defaults that make sense."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_UNET
from mssl.cli import app
from mssl.config import BackboneConfig, ConfigError, PretrainConfig, S2DCConfig, build_config, input_size_problem
from mssl.train.pretrain import resolve_config
from mssl.train.run_lock import run_lock

SWIN = BackboneConfig(name="swin", feature_size=12)
DEMO = Path(__file__).resolve().parents[1] / "src" / "mssl" / "data" / "demo" / "dataset.json"


def test_swin_decoder_needs_more_than_one_bottleneck_voxel() -> None:
    assert "single bottleneck voxel" in input_size_problem(SWIN, (32, 32, 32), decode=True)
    assert input_size_problem(SWIN, (64, 32, 32), decode=True) is None
    assert input_size_problem(SWIN, (32, 32, 32), decode=False) is None  # S²DC and classifiers read the encoder only
    assert "stride 32" in input_size_problem(SWIN, (48, 48, 48), decode=False)
    assert "stride 4" in input_size_problem(TINY_UNET, (30, 32, 32), decode=True)


def test_gvsl_on_swin_with_a_one_voxel_bottleneck_is_refused_at_config_time() -> None:
    with pytest.raises(ValueError, match="'gvsl': roi.*single bottleneck voxel"):
        resolve_config(method="gvsl", backbone="swin", roi=32)


def test_s2dc_field_follows_roi_unless_set() -> None:
    assert S2DCConfig(roi=32).field_size == (128, 128, 32)  # the paper's 4 × 4 × 1 grid of crops
    assert S2DCConfig(roi=32, field_size=(64, 64, 64)).field_size == (64, 64, 64)
    assert resolve_config(roi=48, backbone={"name": "unet", "unet_channels": (8, 16)}).s2dc.field_size == (192, 192, 48)


def test_warm_up_is_clamped_to_a_tenth_of_a_short_run() -> None:
    with pytest.warns(UserWarning, match="warm-up of 500 steps shortened to 3"):
        config = resolve_config(steps=30)
    assert config.optim.warmup_steps == 3
    assert resolve_config(steps=100_000).optim.warmup_steps == 500  # the recipe where it fits


def test_gvsl_alone_defaults_to_its_paper_unet_and_batch() -> None:
    config = PretrainConfig.model_validate({"method": "gvsl"})
    assert config.backbone.name == "unet" and config.data.batch_size == 2
    chosen = resolve_config(method="gvsl", backbone="swin", batch_size=1)
    assert chosen.backbone.name == "swin" and chosen.data.batch_size == 1
    assert PretrainConfig.model_validate({"method": "s2dc"}).backbone.name == "swin"


def test_a_refused_finetune_leaves_no_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = CliRunner().invoke(
        app, ["finetune", "--task", "seg", "--data", str(DEMO), "--backbone", "swin", "--feature-size", "12", "--roi", "32", "--out", str(out)]
    )
    assert result.exit_code == 2 and "single bottleneck voxel" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_run_lock_keeps_a_folder_that_holds_something(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        (tmp_path / "run" / "config.yaml").write_text("x: 1")
    assert (tmp_path / "run" / "config.yaml").is_file()
    existing = tmp_path / "existing"
    existing.mkdir()
    with run_lock(existing):
        pass
    assert existing.is_dir()  # not created by the lock: never removed by it


def test_the_run_config_itself_refuses_a_crop_its_backbone_cannot_take() -> None:
    """The check belongs to PretrainConfig's validation (YAML, API, resume), for the objectives trained only."""
    with pytest.raises(ConfigError, match=r"'gvsl': roi \(30, 30, 30\) is not a multiple of the unet backbone's stride 16"):
        build_config(PretrainConfig, {"method": "gvsl", "gvsl": {"roi": 30}})
    assert build_config(PretrainConfig, {"method": "s2dc", "gvsl": {"roi": 30}}).gvsl.roi == (30, 30, 30)  # not trained
    with pytest.raises(ConfigError, match=r"'s2dc': roi \(48, 48, 48\) is not a multiple of the swin backbone's stride 32"):
        build_config(PretrainConfig, {"s2dc": {"roi": 48}})
