import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR

from conftest import TINY_UNET
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
        (TINY_UNET, 32),
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
    backbone = build_backbone(TINY_UNET)
    with pytest.raises(ValueError, match="not a multiple of the unet backbone.s stride 4"):
        backbone(torch.randn(1, 1, 30, 32, 32))


def test_unet_gradients_reach_every_parameter():
    backbone = build_backbone(TINY_UNET)
    features = backbone(torch.randn(2, 1, 16, 16, 16))
    (features.local.square().mean() + features.bottleneck.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def _saved_bytes_and_gradients(backbone, x):
    """Bytes the autograd graph keeps for backward, and every parameter's gradient after one backward."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        features = backbone(x)
    (features.local.square().mean() + features.bottleneck.mean()).backward()
    return sum(saved), {name: p.grad for name, p in backbone.named_parameters()}


@pytest.mark.parametrize(
    "config, size",
    [
        (TINY_UNET, 32),
        (BackboneConfig(name="swin", feature_size=12, window_size=4), 64),
    ],
)
def test_checkpointed_activations_give_the_same_gradients_and_keep_less(config, size):
    x = torch.randn(1, 1, size, size, size)
    plain = build_backbone(config)
    checkpointed = build_backbone(config.model_copy(update={"gradient_checkpointing": True}))
    checkpointed.load_state_dict(plain.state_dict())
    plain_saved, plain_grads = _saved_bytes_and_gradients(plain, x)
    checkpointed_saved, checkpointed_grads = _saved_bytes_and_gradients(checkpointed, x)
    assert checkpointed_saved < 0.7 * plain_saved  # the recomputed blocks keep only their inputs
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():  # the backward recomputes the same forward: same gradients
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_is_refused_for_nnunet_backbones():
    with pytest.raises(ValueError, match="gradient_checkpointing is available for the swin and unet backbones"):
        BackboneConfig(name="plainconv", gradient_checkpointing=True)


def _count_sdpa_calls(monkeypatch) -> list[int]:
    calls = [0]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


def test_swin_no_grad_passes_run_sdpa_with_the_explicit_attentions_outputs(monkeypatch):
    """Teacher, probe and inference passes take SDPA; training passes keep MONAI's explicit attention; same outputs."""
    from monai.networks.nets.swin_unetr import WindowAttention

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="swin", feature_size=12, window_size=4)).eval()
    x = torch.randn(2, 1, 64, 64, 64)
    calls = _count_sdpa_calls(monkeypatch)
    with torch.no_grad():
        fused = backbone(x, decode=False).bottleneck
    assert calls[0] == sum(isinstance(m, WindowAttention) for m in backbone.modules())  # every block, once
    with_grad = backbone(x, decode=False).bottleneck
    assert calls[0] == sum(isinstance(m, WindowAttention) for m in backbone.modules())  # unchanged: explicit path
    torch.testing.assert_close(fused, with_grad.detach(), atol=1e-5, rtol=1e-5)


def test_s2dc_teacher_and_downstream_swinunetr_use_sdpa(monkeypatch):
    from mssl.models.ema import make_teacher
    from mssl.models.task_networks import build_segmentation_network

    config = BackboneConfig(name="swin", feature_size=12, window_size=4)
    teacher = make_teacher(torch.nn.ModuleDict({"backbone": build_backbone(config)}))
    network = build_segmentation_network(config, num_classes=3).eval()
    calls = _count_sdpa_calls(monkeypatch)
    with torch.no_grad():
        teacher.backbone(torch.randn(1, 1, 64, 64, 64), decode=False)
        after_teacher = calls[0]
        network(torch.randn(1, 1, 64, 64, 64))
    assert after_teacher > 0 and calls[0] > after_teacher


def test_unet_runs_channels_last_with_the_contiguous_networks_features_and_gradients():
    """The layout is a speed choice only (benchmarks/results/layout_and_attention.md): same maps, same gradients."""
    torch.manual_seed(0)
    backbone = build_backbone(TINY_UNET)
    convolutions = [m for m in backbone.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convolutions and all(c.weight.is_contiguous(memory_format=torch.channels_last_3d) for c in convolutions)
    contiguous = copy.deepcopy(backbone).to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 1, 16, 16, 16)
    outputs = []
    for net in (backbone, contiguous):
        features = net(x)
        (features.local.square().mean() + features.bottleneck.mean()).backward()
        outputs.append(features.local.detach())
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(backbone.named_parameters(), contiguous.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
