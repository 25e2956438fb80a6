"""The typed sidecar: the current format round-trips, first-format (mssl-encoder/1) sidecars still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_UNET, TINY_UNET_CHANNELS
from mssl.config import BackboneConfig
from mssl.data.preprocess import PresetConfig
from mssl.downstream.pretrained import describe_weights
from mssl.models.backbones import UNetBackbone
from mssl.runs import sidecar_of
from mssl.weights.loading import load_pretrained
from mssl.weights.safe_io import write_safetensors
from mssl.weights.sidecar import SIDECAR_FORMAT, EncoderSidecar, network_spec, read_sidecar, write_sidecar



def _unet_weights(folder: Path) -> Path:
    torch.manual_seed(0)
    return write_safetensors(UNetBackbone(1, TINY_UNET_CHANNELS).state_dict(), folder / "encoder.safetensors", {})


def _v1_sidecar(decoder_keys: list[str]) -> dict:
    """A sidecar as `mssl export` wrote it in the first format (trimmed of fields no reader uses)."""
    return {
        "format": "mssl-encoder/1",
        "method": "gvsl",
        "backbone": {"name": "unet", "class": "mssl.models.backbones.UNetBackbone", "args": {"in_channels": 1, "channels": [8, 16, 32]}},
        "in_channels": 1,
        "spacing": [1.5, 1.5, 2.0],
        "preset": {"name": "ct", "spacing": [1.5, 1.5, 2.0], "a_min": -1000.0, "a_max": 1000.0, "lower": 0.5, "upper": 99.5,
                   "foreground_crop": True, "channel_axis": None},
        "roi": {"gvsl": [32, 32, 32]},
        "steps": 10,
        "data_index_hash": "ab" * 32,
        "data": {"cache": "/data/cache", "available": True, "cases": 4},
        "tensors": 12,
        "decoder_trained": False,
        "untrained": decoder_keys,
        "parameters": 1000,
        "source": {"run": "/runs/gvsl", "checkpoint": "/runs/gvsl/checkpoints/last.ckpt"},
        "created": "2026-11-01T10:00:00+00:00",
        "versions": {"mssl": "0.1.0"},
        "config": {"method": "gvsl"},
        "weights": {"file": "encoder.safetensors", "sha256": "00" * 32},
    }


def test_a_first_format_sidecar_loads_as_the_typed_sidecar(tmp_path: Path) -> None:
    weights = _unet_weights(tmp_path)
    decoder = sorted(k for k in UNetBackbone(1, TINY_UNET_CHANNELS).state_dict() if k.startswith("decoders."))
    sidecar_of(weights).write_text(json.dumps(_v1_sidecar(decoder)), encoding="utf-8")

    sidecar = read_sidecar(weights)
    assert sidecar.format == SIDECAR_FORMAT and sidecar.backbone == TINY_UNET
    assert sidecar.network.class_name == "mssl.models.backbones.UNetBackbone" and sidecar.network.args["channels"] == [8, 16, 32]
    assert sidecar.preset == PresetConfig(name="ct", spacing=(1.5, 1.5, 2.0))
    assert sidecar.spacing == (1.5, 1.5, 2.0) and sidecar.data.index_hash == "ab" * 32 and sidecar.data.cases == 4
    assert sidecar.untrained == decoder and sidecar.decoder_trained is False and sidecar.roi == {"gvsl": [32, 32, 32]}
    assert sidecar.weights.file == "encoder.safetensors"

    info = describe_weights(weights)  # what fine-tuning reads
    assert info.backbone == TINY_UNET and info.preset == sidecar.preset and info.method == "gvsl"
    report = load_pretrained(UNetBackbone(1, TINY_UNET_CHANNELS), weights, verbose=False)
    assert report.trained_known and sorted(report.untrained) == decoder


def test_first_format_variants_a_bare_preset_name_and_constructor_argument_names(tmp_path: Path) -> None:
    weights = write_safetensors({"x": torch.zeros(1)}, tmp_path / "encoder.safetensors", {})
    swin = {"name": "swin", "args": {"in_channels": 2, "feature_size": 24, "window_size": 4, "use_v2": False, "use_checkpoint": True, "spatial_dims": 3}}
    sidecar_of(weights).write_text(json.dumps({"backbone": swin, "preset": "mri", "spacing": [1.0, 1.0, 1.0]}), encoding="utf-8")
    sidecar = read_sidecar(weights)
    assert sidecar.backbone == BackboneConfig(name="swin", in_channels=2, feature_size=24, window_size=4, use_v2=False, gradient_checkpointing=True)
    assert sidecar.preset == PresetConfig(name="mri", spacing=(1.0, 1.0, 1.0)) and sidecar.network is None


def test_the_current_format_round_trips_and_describes_the_network_for_other_code(tmp_path: Path) -> None:
    weights = _unet_weights(tmp_path)
    written = EncoderSidecar(method="gvsl", backbone=TINY_UNET, network=network_spec(TINY_UNET), preset=PresetConfig(name="ct"), steps=3)
    write_sidecar(written, weights)
    raw = json.loads(sidecar_of(weights).read_text(encoding="utf-8"))
    assert raw["format"] == SIDECAR_FORMAT and raw["network"]["class"] == "mssl.models.backbones.UNetBackbone"
    assert raw["network"]["args"] == {"in_channels": 1, "channels": [8, 16, 32]}
    assert read_sidecar(weights) == written and written.weights.file == weights.name


def test_an_unknown_format_is_one_clear_error(tmp_path: Path) -> None:
    weights = _unet_weights(tmp_path)
    sidecar_of(weights).write_text(json.dumps({"format": "mssl-encoder/9", "method": "gvsl"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"encoder.json: unknown sidecar format 'mssl-encoder/9'; this mssl reads mssl-encoder/2 and mssl-encoder/1"):
        read_sidecar(weights)
