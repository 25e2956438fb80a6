"""mssl inspect: target built from the sidecar or the shapes, per-module report, stem adaptation, CLI."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_UNET, TINY_UNET_CHANNELS
from mssl.cli import app
from mssl.weights.inspect import infer_swin_args, infer_unet_args, inspect_weights
from mssl.weights.safe_io import write_safetensors
from mssl.models.backbones import SwinBackbone, UNetBackbone

runner = CliRunner()


@pytest.fixture
def swin_file(tmp_path):
    backbone = SwinBackbone(in_channels=1, feature_size=12, window_size=4, use_v2=True)
    return write_safetensors(backbone.state_dict(), tmp_path / "swin.safetensors", {})


@pytest.fixture
def unet_file(tmp_path):
    return write_safetensors(UNetBackbone(2, TINY_UNET_CHANNELS).state_dict(), tmp_path / "unet.safetensors", {})


def test_constructor_arguments_are_read_off_the_shapes(swin_file, unet_file):
    from mssl.weights.safe_io import read_weights

    assert infer_swin_args(read_weights(swin_file), "f") == {
        "in_channels": 1, "feature_size": 12, "window_size": 4, "use_v2": True, "spatial_dims": 3
    }
    voco_style = {f"module.{k}".replace("swinViT", "swin_vit"): v for k, v in read_weights(swin_file).items()}
    assert infer_swin_args(voco_style, "f")["feature_size"] == 12
    assert infer_unet_args(read_weights(unet_file), "f") == {"in_channels": 2, "channels": [8, 16, 32]}
    with pytest.raises(ValueError, match="not mssl U-Net weights"):
        infer_unet_args(read_weights(swin_file), "f")


def test_inspect_swin_into_three_channels_adapts_every_stem(swin_file):
    report = inspect_weights(swin_file, into="swinunetr", in_channels=3)
    assert report.ok
    assert set(report.adapted) == {
        "swinViT.patch_embed.proj.weight", "encoder1.layer.conv1.conv.weight", "encoder1.layer.conv3.conv.weight"
    }
    assert all(shapes[1][1] == 3 for shapes in report.adapted.values())
    assert report.missing == ["out.conv.conv.weight", "out.conv.conv.bias"]
    modules = report.by_module()
    assert list(modules)[0] == "swinViT"  # network order, not alphabetical
    assert len(modules["swinViT"]["loaded"]) + len(modules["swinViT"]["adapted"]) == sum(
        k.startswith("swinViT.") for k in SwinBackbone(1, 12, 4, use_v2=True).state_dict()
    )
    assert "in_channels=3" in report.target


def test_inspect_guesses_the_target_and_reports_wrong_targets(unet_file, swin_file):
    assert inspect_weights(unet_file).target.startswith("mssl UNetBackbone(in_channels=2")
    with pytest.raises(ValueError, match="not SwinUNETR weights"):
        inspect_weights(unet_file, into="swinunetr")


def test_cli_inspect_prints_the_table_and_fails_on_mismatch(tmp_path, unet_file):
    result = runner.invoke(app, ["inspect", str(unet_file), "--into", "unet", "--in-channels", "1"])
    assert result.exit_code == 0, result.output
    assert "encoders" in result.output and "adapted    encoders.0.0.weight: (8, 2, 3, 3, 3) -> (8, 1, 3, 3, 3)" in result.output
    state = UNetBackbone(2, TINY_UNET_CHANNELS).state_dict()
    state["encoders.2.0.weight"] = torch.zeros(32, 16, 1, 1, 1)
    bad = write_safetensors(state, tmp_path / "bad.safetensors", {})
    result = runner.invoke(app, ["inspect", str(bad), "--keys"])
    assert result.exit_code == 1
    assert "mismatched encoders.2.0.weight: weights (32, 16, 1, 1, 1) vs network (32, 16, 3, 3, 3)" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "absent.pt")])
    assert result.exit_code == 2


def test_a_finetuned_run_is_inspected_against_its_whole_network_heads_included(tmp_path):
    """A fine-tuned segmentation run (deep supervision at 1/2): its head and auxiliary heads are part of the
    network model.json describes, so every tensor loads and the command exits 0."""
    import json

    from mssl.downstream.run_files import save_weights
    from mssl.models.task_networks import finetuned_network
    from mssl.runs import FinetuneRun

    run = FinetuneRun(tmp_path / "run")
    run.path.mkdir()
    description = {"task": "seg", "backbone": TINY_UNET.model_dump(mode="json"), "num_classes": 3, "deep_supervision": 1}
    run.model.write_text(json.dumps(description), encoding="utf-8")
    save_weights(finetuned_network(description), run.path)  # as mssl finetune writes it
    result = runner.invoke(app, ["inspect", str(run.path)])
    assert result.exit_code == 0, result.output
    assert "every tensor loaded" in result.output and "fine-tuned seg" in result.output
    report = inspect_weights(run.path)
    assert not report.unexpected and not report.missing and {"head", "auxiliary_heads"} <= set(report.by_module())


@pytest.mark.parametrize("name", ["export", "inspect"])
def test_cli_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example: mssl " + name in result.output
