"""Deep supervision: coarser outputs in training only, and the nnU-Net-weighted loss over them."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mssl.config import BackboneConfig
from mssl.downstream.deep_supervision import deep_supervised_loss, deep_supervision_weights
from mssl.models.task_networks import build_segmentation_network, initialise_class_prior


def _network(levels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_segmentation_network(BackboneConfig(name="unet", unet_channels=(4, 8, 16)), 3, deep_supervision=levels)


def test_training_returns_coarser_outputs_and_eval_only_the_full_resolution_one() -> None:
    network = _network(1)
    x = torch.randn(2, 1, 16, 16, 16)
    full, half = network.train()(x)
    assert full.shape == (2, 3, 16, 16, 16) and half.shape == (2, 3, 8, 8, 8)
    assert torch.allclose(network.eval()(x), full, atol=1e-6)  # GroupNorm: train and eval agree


def test_without_deep_supervision_the_network_is_the_plain_segmenter() -> None:
    plain, supervised = _network(0), _network(1)
    x = torch.randn(1, 1, 16, 16, 16)
    missing, unexpected = plain.load_state_dict(supervised.state_dict(), strict=False)
    assert not missing and unexpected == ["auxiliary_heads.0.weight", "auxiliary_heads.0.bias"]
    assert torch.allclose(plain.train()(x), supervised.eval()(x), atol=1e-6)


def test_levels_beyond_the_decoder_are_refused() -> None:
    with pytest.raises(ValueError, match="deep_supervision must be in"):
        _network(2)


def test_class_prior_reaches_the_auxiliary_heads() -> None:
    network = _network(1)
    initialise_class_prior(network, torch.tensor([97.0, 1.0, 1.0]))
    expected = torch.tensor([98.0, 2.0, 2.0]).div(102.0).log()
    assert torch.allclose(network.head.bias, expected) and torch.allclose(network.auxiliary_heads[0].bias, expected)


def test_weights_halve_per_level_and_sum_to_one() -> None:
    assert torch.allclose(deep_supervision_weights(3), torch.tensor([4.0, 2.0, 1.0]) / 7)


def test_loss_is_the_weighted_sum_over_nearest_downsampled_labels() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (1, 1, 8, 8, 8))
    full, half = torch.randn(1, 3, 8, 8, 8), torch.randn(1, 3, 4, 4, 4)
    present = torch.ones(1, 3, dtype=torch.bool)

    def cross_entropy(logits: torch.Tensor, target: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target[:, 0])

    expected = 2 / 3 * cross_entropy(full, labels, present) + 1 / 3 * F.cross_entropy(half, labels[:, 0, ::2, ::2, ::2])
    assert torch.allclose(deep_supervised_loss(cross_entropy, [full, half], labels, present), expected, atol=1e-6)
    assert torch.allclose(deep_supervised_loss(cross_entropy, full, labels, present), cross_entropy(full, labels, present))


def test_the_unet_segmenter_runs_channels_last_with_the_contiguous_networks_outputs_and_gradients() -> None:
    network = _network(1)  # channels-last, as the U-Net is built (tests/models/test_backbones.py)
    contiguous = _network(1).to(memory_format=torch.contiguous_format)
    x = torch.randn(2, 1, 16, 16, 16)
    for net in (network, contiguous):
        sum(output.square().mean() for output in net.train()(x)).backward()
    torch.testing.assert_close(network(x)[0], contiguous(x)[0], atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(network.named_parameters(), contiguous.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_channels_last_weights_save_and_reload_unchanged(tmp_path) -> None:
    from mssl.downstream.run_files import save_weights
    from safetensors.torch import load_file

    network = _network(1)
    torch.manual_seed(1)
    reloaded = build_segmentation_network(BackboneConfig(name="unet", unet_channels=(4, 8, 16)), 3, deep_supervision=1)
    assert not torch.equal(reloaded.head.weight, network.head.weight)
    reloaded.load_state_dict(load_file(str(save_weights(network, tmp_path))))
    for (name, p), q in zip(network.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(p, q), name
