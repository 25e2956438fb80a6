"""GVSL on real OpenKBP CT crops (skipped when ../shared/data is absent)."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from mssl.config import BackboneConfig, GVSLConfig
from mssl.losses.gvsl import local_ncc_loss
from mssl.methods.gvsl import GVSLMethod, affine_bounds
from mssl.models.backbones import build_backbone
from mssl.models.warp import affine_matrix, warp
from mssl.models.zmatch import ZMatchHead

pytestmark = pytest.mark.realdata

CROP = 32
HU_WINDOW = (-1000.0, 1000.0)
# stride-8 U-Net: a cheap 4³ bottleneck keeps 150 head steps fast; batches of 2 use the fast mkldnn convolutions
SMALL_UNET = BackboneConfig(name="unet", unet_channels=(4, 8, 16, 32))


def _crops(root, count: int = 2) -> torch.Tensor:
    """Central CROP³ crops of the first ``count`` cases, HU windowed to [0, 1]: (count, 1, CROP, CROP, CROP)."""
    entries = json.loads((root / "dataset.json").read_text(encoding="utf-8"))["training"][:count]
    crops = []
    for entry in entries:
        volume = np.asarray(nib.load(root / entry["image"]).dataobj, dtype=np.float32)
        start = [(n - CROP) // 2 for n in volume.shape]
        crop = volume[tuple(slice(s, s + CROP) for s in start)]
        crops.append(np.clip((crop - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0, 1))
    return torch.from_numpy(np.stack(crops)).unsqueeze(1)


def _known_affines() -> torch.Tensor:
    return affine_matrix(
        rotation=torch.tensor([[0.0, 0.0, math.radians(8)], [math.radians(-6), 0.0, 0.0]]),
        scale=torch.tensor([[1.05, 0.97, 1.0], [1.0, 1.0, 0.95]]),
        shear=torch.zeros(2, 6),
        translation=torch.tensor([[2.0, -2.0, 1.5], [-1.5, 1.0, 2.0]]),
    )


def test_affine_head_recovers_a_known_affine_on_real_ct(openkbp_dir):
    # Seeded: from some initialisations the head settles in a poor optimum (measured on seeds 0-3 at 300
    # steps: linear error ×0.37 for seeds 0, 2, 3, stuck at ×1.3 for seed 1); unseeded, the test followed
    # whatever the global generator held after the other imports.
    torch.manual_seed(0)
    fixed = _crops(openkbp_dir)
    known = _known_affines()
    moving = warp(fixed, known)  # B(p) = A(T(p)): pulling B back onto A needs T^-1
    target = torch.linalg.inv(torch.cat([known, torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(2, 1, 4)], dim=1))[:, :3]
    backbone = build_backbone(SMALL_UNET).eval()
    with torch.no_grad():
        features = backbone(torch.cat([fixed, moving]))
    fixed_global, moving_global = features.bottleneck.chunk(2)
    config = GVSLConfig()
    head = ZMatchHead(backbone.bottleneck_channels, backbone.local_channels, affine_bounds(config))
    optimizer = torch.optim.Adam(head.affine.parameters(), lr=3e-3)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        affine = head.affine(moving_global, fixed_global, (CROP,) * 3)
        return local_ncc_loss(warp(moving, affine), fixed, config.ncc_window, config.ncc_eps), affine

    initial, start = step()
    for _ in range(300):
        loss, _ = step()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final, learned = step()
    assert final.item() <= 0.7 * initial.item()
    linear_error = lambda a: (a[:, :, :3] - target[:, :, :3]).abs().mean().item()  # noqa: E731
    shift_error = lambda a: (a[:, :, 3] - target[:, :, 3]).abs().mean().item()  # noqa: E731
    assert linear_error(learned.detach()) < 0.5 * linear_error(start.detach())
    assert shift_error(learned.detach()) < 0.5 * shift_error(start.detach())


def test_short_joint_run_lowers_the_total_loss(openkbp_dir):
    fixed = _crops(openkbp_dir)
    batch = {"pair": torch.stack([fixed, warp(fixed, _known_affines())], dim=1)}  # (2, 2, 1, 32, 32, 32)
    method = GVSLMethod(build_backbone(SMALL_UNET), GVSLConfig(roi=(CROP,) * 3, spatial_aug=False))
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        output = method(batch)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
