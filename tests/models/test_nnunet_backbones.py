"""nnU-Net's PlainConvUNet / ResidualEncoderUNet behind the Features interface, configured from presets or plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("dynamic_network_architectures")

from mssl.config import BackboneConfig, ConfigError, GVSLConfig, PretrainConfig, S2DCConfig, backbone_stride, build_config  # noqa: E402
from mssl.methods.gvsl import GVSLMethod  # noqa: E402
from mssl.methods.s2dc import S2DCMethod  # noqa: E402
from mssl.models.backbones import build_backbone  # noqa: E402
from mssl.models.nnunet_backbones import build_nnunet_network  # noqa: E402

NAMES = ("plainconv", "resenc")


def tiny(name: str, **fields) -> BackboneConfig:
    return BackboneConfig(name=name, nnunet={"preset": "tiny", **fields})


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_nnunets_without_the_segmentation_layers(name):
    config = tiny(name)
    network = build_nnunet_network(name, 1, config.nnunet, num_classes=3).state_dict()
    backbone = build_backbone(config).state_dict()
    expected = {k: v.shape for k, v in network.items() if ".seg_layers." not in k}
    assert {k: v.shape for k, v in backbone.items()} == expected
    assert any(k.startswith("decoder.encoder.") for k in backbone)  # nnU-Net's decoder holds the encoder too


@pytest.mark.parametrize("name", NAMES)
def test_features_are_nnunets_encoder_skips_and_decoder_map(name):
    config = tiny(name)
    backbone = build_backbone(config).eval()
    network = build_nnunet_network(name, 1, config.nnunet, num_classes=3).eval()
    network.load_state_dict(backbone.state_dict(), strict=False)  # only seg_layers stay the network's own
    x = torch.randn(2, 1, 16, 24, 32)
    with torch.no_grad():
        features = backbone(x)
        skips = network.encoder(x)
        logits = network(x)
    assert [f.shape for f in features.pyramid] == [(2, 8, 16, 24, 32), (2, 16, 8, 12, 16), (2, 32, 4, 6, 8)]
    assert backbone.pyramid_strides == (1, 2, 4) and backbone.stride == backbone_stride(config) == 4
    assert all(torch.equal(a, b) for a, b in zip(features.pyramid, skips))
    assert features.bottleneck is features.pyramid[-1]
    assert features.local.shape == (2, backbone.local_channels, 16, 24, 32)
    # nnU-Net's output is its last segmentation layer applied to our full-resolution decoder map
    torch.testing.assert_close(network.decoder.seg_layers[-1](features.local), logits)
    assert backbone(x, decode=False).local is None


def test_default_presets_match_nnunets_resenc_and_plain_unets():
    resenc = BackboneConfig(name="resenc").nnunet
    assert resenc.features_per_stage == (32, 64, 128, 256, 320, 320) and resenc.blocks_per_stage == (1, 3, 4, 6, 6, 6)
    assert resenc.total_stride() == 32
    assert BackboneConfig(name="plainconv").nnunet.blocks_per_stage == (2,) * 6


def test_sizes_must_suit_the_strides_and_leave_a_bottleneck_instancenorm_can_normalise():
    backbone = build_backbone(tiny("resenc"))
    with pytest.raises(ValueError, match="not a multiple of the resenc backbone.s stride 4"):
        backbone(torch.randn(1, 1, 16, 16, 18))
    with pytest.raises(ValueError, match="single bottleneck voxel"):
        backbone(torch.randn(1, 1, 4, 4, 4))


def _warm_up(method: torch.nn.Module, batch: dict[str, torch.Tensor]) -> None:
    """One SGD step: ResEnc zero-initialises the last norm of each residual block (nnU-Net's init), so the
    convolution before it gets a zero gradient until that norm weight has moved."""
    method(batch).loss.backward()
    torch.optim.SGD(method.parameters(), lr=0.1).step()
    method.zero_grad()


@pytest.mark.parametrize("name", NAMES)
def test_a_gvsl_step_reaches_every_parameter(name):
    method = GVSLMethod(build_backbone(tiny(name)), GVSLConfig(roi=(16, 16, 16)))
    batch = {"pair": torch.rand(2, 2, 1, 16, 16, 16)}
    _warm_up(method, batch)
    output = method(batch)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert [n for n, p in method.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize(("name", "token_stage"), [("plainconv", -1), ("resenc", -1), ("resenc", 1)])
def test_an_s2dc_step_reaches_every_encoder_parameter(name, token_stage):
    config = S2DCConfig(field_size=(32, 16, 16), roi=16, head_hidden=32, head_out=16, queue_size=6, sinkhorn_iters=10, token_stage=token_stage)
    method = S2DCMethod(build_backbone(tiny(name)), config)
    batch = {"field": torch.rand(1, 1, 1, 32, 16, 16)}  # two grid crops
    _warm_up(method, batch)
    output = method(batch)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    trained = [(n, p) for n, p in method.named_parameters() if not n.startswith(("teacher.", "backbone.decoder."))]
    assert [n for n, p in trained if p.grad is None or not p.grad.abs().sum() > 0] == []
    assert all(p.grad is None for n, p in method.named_parameters() if n.startswith("teacher."))
    assert method.token_stride == (4 if token_stage == -1 else 2)


def _plans(tmp_path: Path, arch_kwargs: dict, network: str = "ResidualEncoderUNet") -> Path:
    plans = {
        "configurations": {
            "3d_fullres": {"architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{network}", "arch_kwargs": arch_kwargs}},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres"},
        }
    }
    path = tmp_path / "nnUNetResEncUNetMPlans.json"
    path.write_text(json.dumps(plans), encoding="utf-8")
    return path


ARCH_KWARGS = {
    "n_stages": 3, "features_per_stage": [8, 16, 24], "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3], [3, 3, 3], [1, 1, 1]], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_blocks_per_stage": [1, 2, 2], "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
}


def test_architecture_from_an_nnunet_plans_file_round_trips_to_its_arch_kwargs(tmp_path):
    plans = _plans(tmp_path, ARCH_KWARGS)
    config = build_config(BackboneConfig, {"name": "resenc", "nnunet": {"plans": str(plans), "configuration": "3d_cascade_fullres"}})
    arch = config.nnunet
    assert (arch.features_per_stage, arch.strides, arch.kernel_sizes, arch.blocks_per_stage) == ((8, 16, 24), (1, 2, 2), (3, 3, 1), (1, 2, 2))
    assert arch.arch_kwargs("resenc") == ARCH_KWARGS
    # the resolved config no longer needs the plans file (a run resumes or exports elsewhere)
    plans.unlink()
    assert BackboneConfig.model_validate(config.model_dump()) == config


@pytest.mark.parametrize(
    ("change", "network", "message"),
    [
        ({"strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]}, "ResidualEncoderUNet", "anisotropic"),
        ({}, "PlainConvUNet", "does not match backbone.name 'resenc'"),
        ({"norm_op": "torch.nn.BatchNorm3d"}, "ResidualEncoderUNet", "norm_op"),
        ({"strides": [[2, 2, 2], [2, 2, 2], [2, 2, 2]]}, "ResidualEncoderUNet", "strides\\[0\\] = 2"),
        ({"n_blocks_per_stage": None, "n_conv_per_stage": [1, 1, 1]}, "ResidualEncoderUNet", "has no n_blocks_per_stage"),
    ],
)
def test_plans_mssl_cannot_pretrain_are_clear_errors(tmp_path, change, network, message):
    plans = _plans(tmp_path, {**ARCH_KWARGS, **change}, network)
    with pytest.raises(ConfigError, match=message):
        build_config(BackboneConfig, {"name": "resenc", "nnunet": {"plans": str(plans)}})


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="backbone.nnunet.preset.*'default' or 'tiny'"):
        build_config(PretrainConfig, {"backbone": {"name": "resenc", "nnunet": {"preset": "huge"}}})


def test_missing_plans_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="plans file not found: .*nope.json"):
        build_config(BackboneConfig, {"name": "plainconv", "nnunet": {"plans": str(tmp_path / "nope.json")}})
