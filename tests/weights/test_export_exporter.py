"""mssl export: MONAI-layout safetensors + sidecar from a run folder, verified before writing."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from monai.networks.nets import SwinUNETR

from conftest import TINY_UNET, TINY_UNET_CHANNELS
from mssl.config import BackboneConfig, GVSLConfig, PretrainConfig, S2DCConfig
from mssl.weights.exporter import export
from mssl.weights.safe_io import read_metadata, read_weights
from mssl.weights.sidecar import METADATA_KEY, file_sha256, read_sidecar
from mssl.models.backbones import UNetBackbone, build_backbone

SWIN = BackboneConfig(name="swin", feature_size=12, window_size=4)


def make_run(root, backbone: BackboneConfig, method: str = "s2dc", steps: int = 5):
    """A run folder shaped like `mssl pretrain` writes it: config.yaml + a weights-only Lightning checkpoint."""
    config = PretrainConfig(
        method=method, backbone=backbone, s2dc=S2DCConfig(field_size=(128, 128, 64), roi=64), gvsl=GVSLConfig(roi=(32, 32, 32))
    ).resolved()
    student = build_backbone(backbone).state_dict()
    state = {f"method.backbone.{k}": v for k, v in student.items()}
    state |= {f"method.teacher.{k}": torch.zeros_like(v) for k, v in student.items()}  # an EMA copy must not leak in
    state["method.token_head.weight"] = torch.ones(3, 3)
    checkpoint = {"state_dict": state, "global_step": steps, "hyper_parameters": {"config": config.model_dump(mode="json")}}
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return run, config, student


def test_swin_export_loads_into_monai_swinunetr_with_no_missing_encoder_keys(tmp_path):
    run, config, student = make_run(tmp_path, SWIN)
    weights = export(run)
    assert weights == run / "export" / "encoder.safetensors"
    network = SwinUNETR(in_channels=1, out_channels=4, feature_size=12, window_size=4, use_v2=True)
    result = network.load_state_dict(read_weights(weights), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys == ["out.conv.conv.weight", "out.conv.conv.bias"]
    for key, value in student.items():
        torch.testing.assert_close(network.state_dict()[key], value)  # the student, not the teacher copy


def test_sidecar_records_provenance_and_is_embedded_in_the_header(tmp_path):
    run, config, student = make_run(tmp_path, SWIN, steps=7)
    weights = export(run)
    sidecar = json.loads((run / "export" / "encoder.json").read_text(encoding="utf-8"))
    assert sidecar["format"] == "mssl-encoder/2" and sidecar["method"] == "s2dc" and sidecar["steps"] == 7
    assert sidecar["backbone"] == SWIN.model_dump(mode="json")  # BackboneConfig(**backbone) rebuilds it
    assert sidecar["network"] == {
        "class": "monai.networks.nets.SwinUNETR",
        "args": {"in_channels": 1, "feature_size": 12, "window_size": 4, "use_v2": True, "spatial_dims": 3},
        "arch_kwargs": None,
    }
    assert sidecar["roi"] == {"s2dc": [64, 64, 64]}
    assert sidecar["config"] == config.model_dump(mode="json")
    assert sidecar["parameters"] == sum(v.numel() for v in student.values())
    assert {"torch", "monai", "mssl", "safetensors"} <= set(sidecar["versions"])
    assert sidecar["weights"]["sha256"] == file_sha256(weights)
    assert sidecar["data"]["available"] is False and sidecar["data"]["index_hash"] is None  # no cache in this fake run
    assert "spacing" not in sidecar and sidecar["data"]["spacing"] is None  # written once, where the data are described
    embedded = json.loads(read_metadata(weights)[METADATA_KEY])
    assert embedded == {**sidecar, "weights": None}
    (run / "export" / "encoder.json").unlink()
    assert read_sidecar(weights).backbone == SWIN


def test_sidecar_is_what_downstream_reads(tmp_path):
    from mssl.downstream.pretrained import describe_weights

    run, config, _ = make_run(tmp_path, TINY_UNET, method="gvsl")
    info = describe_weights(export(run))
    assert info.backbone == config.backbone and info.method == "gvsl"


def test_unet_export_in_both_formats_loads_strictly_into_the_project_unet(tmp_path):
    run, config, student = make_run(tmp_path, TINY_UNET, method="gvsl")
    for fmt in ("monai", "torch"):
        weights = export(run, out=tmp_path / fmt, format=fmt)
        network = UNetBackbone(1, TINY_UNET_CHANNELS)
        tensors = read_weights(weights) if fmt == "monai" else torch.load(weights, weights_only=True)
        network.load_state_dict(tensors, strict=True)
        assert json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))["roi"] == {"gvsl": [32, 32, 32]}


def test_export_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.ckpt"):
        export(tmp_path)
    run, _, _ = make_run(tmp_path, TINY_UNET, method="gvsl")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["config"]["backbone"]["unet_channels"] = [8, 16, 64]
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="last.ckpt: backbone weights do not match its config.backbone"):
        export(run)
    checkpoint["state_dict"] = {"model.x": torch.zeros(1)}
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match=r"no 'method.backbone.\*' tensors"):
        export(run)
    with pytest.raises(ValueError, match="unknown export format"):
        export(run, format="onnx")


def test_cli_export(tmp_path):
    from typer.testing import CliRunner

    from mssl.cli import app

    run, _, _ = make_run(tmp_path, TINY_UNET, method="gvsl")
    result = CliRunner().invoke(app, ["export", str(run), "--format", "torch", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "loads into mssl.models.backbones.UNetBackbone(in_channels=1, channels=[8, 16, 32])" in result.output
    assert (tmp_path / "out" / "encoder.pt").is_file() and (tmp_path / "out" / "encoder.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["export", str(empty)])
    assert result.exit_code == 2 and "no checkpoints/last.ckpt" in result.output
