"""GVSL (CVPR 2023): geometric visual similarity learning by Z-matching + self-restoration, corrected.

One step on a batch of pairs (A, B) from two different volumes, by default cropped at the same relative
position of each (body-cropped) volume with a ±4-voxel jitter: the official code registers whole volumes
with one field of view, while crops at independent positions show different anatomy. On 48³ IXI crops
the best affine within the head's bounds reaches NCC² 0.231 on such pairs against 0.073 on independent
ones (benchmarks/results/gvsl_pair_sampling.md).

    damaged A  = appearance damage of A                     (views.appearance, no gradient)
    A, damaged A, B = one shared spatial augmentation      (views.spatial_aug, training only)
    f^g, f^l   = backbone([damaged A; B])                   one pass on the stacked batch (2B)
    affine, u  = Z-matching head(f^g_B, f^g_A, f^l_B, f^l_A)
    warped B   = B(T(p + u(p)))                             one grid_sample
    loss       = w_ncc·(1 − NCC²₉(warped B, A)) + w_restore·MSE(R(f^l_A), A) + w_smooth·smooth(u)

Fixes over the official code are listed in reference/gvsl.md §5 and DESIGN §5: differentiable,
batched affine head; one warp with consistent align_corners; batch > 1; per-block pixel shuffle;
batched torch augmentation on the training device; the backbone runs once, not twice.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mssl.config import GVSLConfig
from mssl.losses.gvsl import local_ncc_loss, restoration_loss, smoothness_loss
from mssl.data.crops import CropRequest
from mssl.methods.base import MethodOutput, PretrainMethod
from mssl.models.features import Backbone
from mssl.models.restoration import RestorationHead
from mssl.models.warp import warp
from mssl.models.zmatch import AffineBounds, ZMatchHead
from mssl.views.appearance import damage_appearance
from mssl.views.spatial_aug import SpatialAugmentation

PAIR_KEY = "pair"


class GVSLMethod(PretrainMethod):
    """Z-matching (affine + deformable registration of B onto damaged A) and restoration of A, one backbone."""

    name: ClassVar[str] = "gvsl"

    def __init__(self, backbone: Backbone, config: GVSLConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.zmatch = ZMatchHead(backbone.bottleneck_channels, backbone.local_channels, affine_bounds(config))
        self.restoration = RestorationHead(backbone.local_channels, out_channels=_image_channels(backbone))
        self.spatial_augmentation = spatial_augmentation(config) if config.spatial_aug else None

    def crop_requests(self) -> dict[str, CropRequest]:
        config = self.config
        corresponding = config.pair_sampling == "corresponding"  # registrable pairs: benchmarks/results/gvsl_pair_sampling.md
        return {PAIR_KEY: CropRequest(tuple(config.roi), volumes=2, corresponding=corresponding, jitter=config.pair_jitter)}

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        pair = batch.get(PAIR_KEY)
        if pair is None or pair.ndim != 6 or pair.shape[1] != 2:
            got = "missing" if pair is None else f"shape {tuple(pair.shape)}"
            raise ValueError(f"GVSL needs batch['{PAIR_KEY}'] of shape (B, 2, C, X, Y, Z), got {got}")
        fixed, moving = pair[:, 0], pair[:, 1]  # A (B, C, X, Y, Z), B (B, C, X, Y, Z)
        config = self.config
        damaged = damage_appearance(fixed, config.shuffle_prob, config.bezier_prob, config.inpaint_prob)
        if self.training and self.spatial_augmentation is not None:
            fixed, damaged, moving = self.spatial_augmentation(fixed, damaged, moving)

        features = self.backbone(torch.cat([damaged, moving]))  # one pass on (2B, C, X, Y, Z)
        fixed_global, moving_global = features.bottleneck.chunk(2)
        fixed_local, moving_local = features.local.chunk(2)
        affine, flow = self.zmatch(moving_global, fixed_global, moving_local, fixed_local)
        warped = warp(moving, affine, flow)
        restored = self.restoration(fixed_local)

        terms = {
            "ncc": local_ncc_loss(warped, fixed, config.ncc_window, config.ncc_eps),
            "restore": restoration_loss(restored, fixed),
            "smooth": smoothness_loss(flow),
        }
        loss = config.w_ncc * terms["ncc"] + config.w_restore * terms["restore"] + config.w_smooth * terms["smooth"]
        metrics = {"flow_abs_mean": flow.detach().abs().mean().float()}
        visuals = {
            "fixed": fixed.detach(),
            "moving": moving.detach(),
            "warped": warped.detach(),
            "flow": flow.detach().float(),
            "affine": affine.detach(),
            "restored": restored.detach().float(),
            "damaged": damaged.detach(),
        }
        return MethodOutput(loss=loss, terms=terms, metrics=metrics, visuals=visuals)


def affine_bounds(config: GVSLConfig) -> AffineBounds:
    """The config's bounds of the Z-matching head's predicted affine."""
    return AffineBounds(
        rotation_deg=config.max_rotation_deg,
        scale_delta=config.max_scale_delta,
        shear_deg=config.max_shear_deg,
        shift_fraction=config.max_shift_fraction,
    )


def spatial_augmentation(config: GVSLConfig) -> SpatialAugmentation:
    """The config's ranges of the shared spatial augmentation (whether it runs at all is ``config.spatial_aug``)."""
    return SpatialAugmentation(
        rotation_deg=config.aug_rotation_deg,
        scale_range=config.aug_scale_range,
        shear_deg=config.aug_shear_deg,
        shift_fraction=config.aug_shift_fraction,
        elastic_alpha=config.elastic_alpha,
        elastic_sigma=config.elastic_sigma,
    )


def _image_channels(backbone: Backbone) -> int:
    """Input channels of a backbone: those of its first convolution (the U-Net stem, the Swin patch embedding)."""
    return next(m.in_channels for m in backbone.modules() if isinstance(m, nn.Conv3d))
