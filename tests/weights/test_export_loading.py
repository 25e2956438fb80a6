"""load_pretrained: wrappers, prefixes, aliases, re-rooting, shape mismatches, stem adaptation, safety."""

from __future__ import annotations

import builtins
import pickle

import pytest
import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from conftest import TINY_UNET_CHANNELS
from mssl.weights.loading import align_keys, load_pretrained
from mssl.weights.safe_io import UnsafeWeightsError, read_metadata, read_weights, write_safetensors
from mssl.weights.stem import adapt_input_channels
from mssl.models.backbones import SwinBackbone, UNetBackbone



def tiny_swin(in_channels: int = 1) -> SwinBackbone:
    return SwinBackbone(in_channels=in_channels, feature_size=12, window_size=4, use_v2=True)


def monai_swin(in_channels: int = 1) -> SwinUNETR:
    return SwinUNETR(in_channels=in_channels, out_channels=2, feature_size=12, window_size=4, use_v2=True)


def test_swin_backbone_loads_into_monai_swinunetr_with_identical_encoder_output():
    backbone = tiny_swin().eval()
    network = monai_swin().eval()
    report = load_pretrained(network, backbone.state_dict())
    assert report.ok and not report.mismatched
    assert not [k for k in report.missing if k.startswith("swinViT.")]
    assert all(k.startswith("out.") for k in report.missing)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        for ours, theirs in zip(backbone.swinViT(x), network.swinViT(x)):
            torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}},
        lambda sd: {f"student.{k}".replace("swinViT", "swin_vit"): v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"method.backbone.{k}": v for k, v in sd.items()}, "global_step": 7},
        lambda sd: {"network_weights": {f"module.backbone.{k}": v for k, v in sd.items()}},
    ],
    ids=["module", "orig_mod", "student+swin_vit", "lightning", "nnssl+module+backbone"],
)
def test_wrappers_prefixes_and_aliases_are_resolved(wrap):
    state = tiny_swin().state_dict()
    network = monai_swin()
    report = load_pretrained(network, wrap(state))
    assert sorted(report.loaded) == sorted(state)
    assert report.ok
    for key, value in state.items():
        torch.testing.assert_close(network.state_dict()[key], value)


def test_bare_transformer_keys_are_rerooted_under_swinvit():
    """MONAI SSL pre-training files hold ``module.patch_embed.*``, ``module.layers1.*``... without ``swinViT.``."""
    swin_only = {k.replace("swinViT.", "module."): v for k, v in tiny_swin().state_dict().items() if k.startswith("swinViT.")}
    report = load_pretrained(monai_swin(), swin_only)
    assert len(report.loaded) == len(swin_only)
    assert all(k.startswith("swinViT.") for k in report.loaded)
    assert not report.unexpected


class SegNet(nn.Module):
    """A downstream network that holds the encoder under ``backbone.`` next to its own head."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.backbone = UNetBackbone(in_channels, TINY_UNET_CHANNELS)
        self.head = nn.Conv3d(TINY_UNET_CHANNELS[0], 3, 1)


def test_export_keys_land_in_a_wrapped_segmentation_net_and_extra_keys_are_unexpected():
    state = dict(UNetBackbone(1, TINY_UNET_CHANNELS).state_dict())
    state["projector.weight"] = torch.ones(4, 4)
    network = SegNet()
    report = load_pretrained(network, state)
    assert sorted(report.loaded) == sorted(f"backbone.{k}" for k in state if k != "projector.weight")
    assert report.unexpected == ["projector.weight"]
    assert sorted(report.missing) == ["head.bias", "head.weight"]
    assert set(report.by_module()) == {"backbone", "head", "projector"}


def test_shape_mismatch_is_reported_and_keeps_the_network_initialisation():
    source = UNetBackbone(1, TINY_UNET_CHANNELS).state_dict()
    network = UNetBackbone(1, (8, 16, 64))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    report = load_pretrained(network, source)
    mismatched_modules = {k.split(".")[0] + "." + k.split(".")[1] for k in report.mismatched}
    assert mismatched_modules == {"encoders.2", "decoders.0"}
    assert report.mismatched["encoders.2.0.weight"] == ((32, 16, 3, 3, 3), (64, 16, 3, 3, 3))
    assert "encoders.0.0.weight" in report.loaded and not report.missing
    after = network.state_dict()
    for key in report.mismatched:
        torch.testing.assert_close(after[key], before[key])
    for key in report.loaded:
        torch.testing.assert_close(after[key], source[key])
    text = str(report)
    assert "encoders" in text and "mismatched encoders.2.0.weight" in text
    with pytest.raises(ValueError, match="strict loading failed: 9 shape-mismatched"):
        load_pretrained(UNetBackbone(1, (8, 16, 64)), source, strict=True)


def test_stem_adaptation_one_to_three_channels_preserves_the_output_on_replicated_input():
    original = UNetBackbone(1, TINY_UNET_CHANNELS).eval()
    network = UNetBackbone(3, TINY_UNET_CHANNELS).eval()
    report = load_pretrained(network, original.state_dict(), in_channels=3)
    assert report.adapted == {"encoders.0.0.weight": ((8, 1, 3, 3, 3), (8, 3, 3, 3, 3))}
    assert report.ok and not report.missing
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        expected, adapted = original(x), network(x.repeat(1, 3, 1, 1, 1))
    torch.testing.assert_close(adapted.local, expected.local, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adapted.bottleneck, expected.bottleneck, rtol=1e-4, atol=1e-5)


def test_stem_adaptation_to_fewer_channels_folds_cyclic_copies():
    weight = torch.randn(5, 4, 3, 3, 3)
    folded = adapt_input_channels(weight, 2)
    x = torch.randn(1, 2, 6, 6, 6)
    expected = nn.functional.conv3d(x.repeat(1, 2, 1, 1, 1), weight)
    torch.testing.assert_close(nn.functional.conv3d(x, folded), expected, rtol=1e-4, atol=1e-5)


def test_swin_stems_are_all_adapted_to_four_channels():
    report = load_pretrained(monai_swin(in_channels=4), tiny_swin().state_dict())
    assert set(report.adapted) == {
        "swinViT.patch_embed.proj.weight",
        "encoder1.layer.conv1.conv.weight",
        "encoder1.layer.conv3.conv.weight",
    }
    assert report.ok


def test_align_keys_gives_each_target_at_most_one_source():
    mapping = align_keys(["module.a.weight", "a.weight", "teacher.a.weight"], ["a.weight"])
    assert mapping == {"module.a.weight": "a.weight"}


class PlantsMarker:
    """Unpickling this object would create the marker file: the attack weights-only loading must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_not_executed(tmp_path, writer):
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"w": torch.zeros(2)}, "evil": PlantsMarker(str(marker))}
    path = tmp_path / "weights.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    with pytest.raises(UnsafeWeightsError, match="weights.pt: refused to load"):
        read_weights(path)
    with pytest.raises(UnsafeWeightsError):
        load_pretrained(nn.Linear(2, 2), path)
    assert not marker.exists()


def test_files_and_folders_are_read_safely(tmp_path):
    state = UNetBackbone(1, TINY_UNET_CHANNELS).state_dict()
    write_safetensors(state, tmp_path / "run" / "export" / "encoder.safetensors", {"backbone": "unet"})
    torch.save({"state_dict": {f"method.backbone.{k}": v for k, v in state.items()}}, tmp_path / "last.ckpt")
    assert read_metadata(tmp_path / "run") == {"backbone": "unet"}
    for source in (tmp_path / "run", tmp_path / "last.ckpt"):
        network = UNetBackbone(1, TINY_UNET_CHANNELS).to(torch.float64)
        report = load_pretrained(network, source)
        assert sorted(report.loaded) == sorted(state) and report.ok
        assert next(network.parameters()).dtype == torch.float64
    with pytest.raises(FileNotFoundError, match="no weights found"):
        read_weights(tmp_path)
