import pytest
import torch
from monai.networks.nets import SwinUNETR

from mssl.config import BackboneConfig
from mssl.models.backbones import build_backbone


def test_swin_state_dict_loads_into_monai_swinunetr():
    backbone = build_backbone(BackboneConfig(name="swin", feature_size=12, window_size=4))
    reference = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=4, use_v2=True)
    report = reference.load_state_dict(backbone.state_dict(), strict=False)
    assert report.unexpected_keys == []
    assert all(k.startswith("out.") for k in report.missing_keys)


@pytest.mark.parametrize(
    "config, size",
    [
        (BackboneConfig(name="swin", feature_size=12, window_size=4), 64),
        (BackboneConfig(name="unet", unet_channels=(8, 16, 32)), 32),
    ],
)
def test_features_shapes_and_optional_decoder(config, size):
    backbone = build_backbone(config)
    x = torch.randn(2, 1, size, size, size)
    features = backbone(x)
    assert [f.shape[1] for f in features.pyramid] == list(backbone.pyramid_channels)
    for f, s in zip(features.pyramid, backbone.pyramid_strides):
        assert f.shape[2:] == (size // s,) * 3
    assert features.bottleneck is features.pyramid[-1]
    assert features.local.shape == (2, backbone.local_channels, size, size, size)
    assert backbone(x, decode=False).local is None


def test_indivisible_size_is_a_clear_error():
    backbone = build_backbone(BackboneConfig(name="unet", unet_channels=(8, 16, 32)))
    with pytest.raises(ValueError, match="divisible by 4"):
        backbone(torch.randn(1, 1, 30, 32, 32))


def test_unet_gradients_reach_every_parameter():
    backbone = build_backbone(BackboneConfig(name="unet", unet_channels=(8, 16, 32)))
    features = backbone(torch.randn(2, 1, 16, 16, 16))
    (features.local.square().mean() + features.bottleneck.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
