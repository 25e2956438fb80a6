"""Sliding-window prediction equals whole-volume prediction."""

from __future__ import annotations

import torch
from torch import nn

from conftest import TINY_UNET
from mssl.downstream.inference import predict_logits
from mssl.models.task_networks import build_segmentation_network


def test_windows_blend_to_the_whole_volume_for_a_pointwise_network() -> None:
    network = nn.Sequential(nn.Conv3d(1, 4, 1), nn.Tanh(), nn.Conv3d(4, 3, 1))
    image = torch.randn(1, 1, 40, 36, 28)
    windows = predict_logits(network, image, roi=(16, 16, 16), overlap=0.5)
    with torch.no_grad():
        whole = network(image)
    assert windows.shape == whole.shape
    assert torch.allclose(windows, whole, atol=1e-5)


def test_one_window_equals_the_network_on_the_whole_volume() -> None:
    network = build_segmentation_network(TINY_UNET, 3)
    image = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        whole = network.eval()(image)
    assert torch.allclose(predict_logits(network, image, roi=(32, 32, 32)), whole, atol=1e-5)
