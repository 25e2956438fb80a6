"""The voxel probe reads features exactly where trilinear upsampling puts them."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from conftest import TINY_UNET_CHANNELS
from mssl.downstream.probe import VoxelProbe, balanced_voxels, patch_samples, sample_points


def _pyramid() -> list[torch.Tensor]:
    return [torch.randn(3, 16, 12, 8), torch.randn(5, 8, 6, 4), torch.randn(2, 2, 3, 2)]


def test_sampled_points_equal_upsampled_features() -> None:
    pyramid, size = _pyramid(), (16, 12, 8)
    upsampled = torch.cat([F.interpolate(p.unsqueeze(0), size=size, mode="trilinear", align_corners=False)[0] for p in pyramid])
    points = torch.stack([torch.randint(0, s, (50,)) for s in size], dim=1)
    expected = upsampled[:, points[:, 0], points[:, 1], points[:, 2]].T
    assert torch.allclose(sample_points(pyramid, points, size), expected, atol=1e-5)


def test_prediction_is_the_linear_map_of_upsampled_standardised_features() -> None:
    pyramid, size = _pyramid(), (16, 12, 8)
    probe = VoxelProbe([p.shape[0] for p in pyramid], 4)
    probe.mean, probe.std = torch.randn(10), torch.rand(10) + 0.5
    upsampled = torch.cat([F.interpolate(p.unsqueeze(0), size=size, mode="trilinear", align_corners=False)[0] for p in pyramid])
    standardised = (upsampled.flatten(1).T - probe.mean) / probe.std
    expected = probe.linear(standardised).argmax(1).view(size)
    assert (probe.predict(pyramid, size) == expected).float().mean() > 0.999


def test_balanced_voxels_only_from_contoured_classes() -> None:
    label = torch.zeros(10, 10, 10, dtype=torch.long)
    label[:3] = 1
    label[5:] = 2
    present = torch.tensor([True, True, False])
    points = balanced_voxels(label, present, 20, torch.Generator().manual_seed(0))
    values = label[points[:, 0], points[:, 1], points[:, 2]]
    assert torch.bincount(values, minlength=3).tolist() == [20, 20, 0]


def test_patches_labelled_by_dominant_contoured_organ() -> None:
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[:4, :4, :4] = 1
    label[4:, 4:, 4:] = 2
    features, labels = patch_samples([torch.randn(6, 4, 4, 4)], label, torch.tensor([True, True, True]), patch=4)
    assert sorted(labels.tolist()) == [1, 2] and features.shape == (2, 6)
    _, labels = patch_samples([torch.randn(6, 4, 4, 4)], label, torch.tensor([True, False, True]), patch=4)
    assert labels.tolist() == [2]


def test_decoder_features_are_the_networks_last_decoder_map() -> None:
    from mssl.downstream.probe import pyramid_features
    from mssl.models.backbones import UNetBackbone

    network = UNetBackbone(in_channels=1, channels=TINY_UNET_CHANNELS).eval()
    image = torch.randn(1, 16, 16, 8)
    (decoder,) = pyramid_features(network, image, "decoder")
    with torch.no_grad():
        expected = network(image.unsqueeze(0)).local[0]
    assert decoder.shape == (8, 16, 16, 8) and torch.equal(decoder, expected)
    assert [level.shape[0] for level in pyramid_features(network, image)] == [8, 16, 32]


def test_nan_patch_scores_come_with_their_reason() -> None:
    """With cubes too large for the organs, the patch classifier has nothing to learn: the report says why
    instead of printing an unexplained 'nan (nan)'."""
    import numpy as np

    from mssl.downstream.probe import EncoderProbe, ProbeResult, _patch_scores

    one_organ = (np.zeros((3, 4)), np.ones(3, dtype=int))
    scores = _patch_scores(one_organ, (np.zeros((0, 4)), np.zeros(0, dtype=int)), k=5, seed=0, patch=16)
    assert np.isnan(scores["knn_accuracy"])
    assert "3 in the training cases (1 organs; 2 needed), 0 in the test cases" in scores["patch_note"] and "e.g. 8" in scores["patch_note"]
    probe = EncoderProbe(encoder="random", dice={"Brainstem": 0.1}, mean_dice=0.1, seconds=1.0, **scores)
    text = ProbeResult(pretrained=None, random=probe, train_cases=["a"], test_cases=["b"]).markdown()
    assert "nan (nan)" in text and "random: no patch scores" in text
