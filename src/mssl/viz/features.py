"""Structure maps of an encoder's patch features: PCA to RGB and k-means clusters over three planes.

A good pre-trained encoder gives the same colour / cluster to the same anatomy and separates organs;
a random one mostly echoes intensity. Both maps are fitted on body voxels only (air would dominate
the variance) and shown over axial, coronal and sagittal slices through the body's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from torch.nn import functional as F

from mssl.models.features import Backbone
from mssl.viz.slices import foreground_mask, slice_centre, slice_specs, take_slice

DEFAULT_STRIDE = 4  # pyramid level shown by default: fine enough to see organs, deep enough to be learned
DEFAULT_CLUSTERS = 6
PCA_PERCENTILES = (1.0, 99.0)  # each component is stretched between these percentiles of the body voxels
MAX_FIT_VOXELS = 20_000  # body voxels the PCA and k-means are fitted on (all voxels are then mapped)
CLUSTER_ALPHA = 0.55
FIGURE_DPI = 110


@dataclass
class StructureMaps:
    """Per-voxel maps at image resolution: ``rgb`` (X, Y, Z, 3) in [0, 1], ``clusters`` (X, Y, Z) in [-1, k)
    (-1 outside the body), for the pyramid level of ``stride``."""

    image: np.ndarray
    rgb: np.ndarray
    clusters: np.ndarray
    stride: int
    explained_variance: tuple[float, float, float]


def pyramid_level(backbone: Backbone, stride: int) -> int:
    if stride not in backbone.pyramid_strides:
        raise ValueError(f"{type(backbone).__name__} has feature maps at strides {backbone.pyramid_strides}, not {stride}")
    return backbone.pyramid_strides.index(stride)


@torch.no_grad()
def patch_features(backbone: Backbone, image: torch.Tensor, stride: int = DEFAULT_STRIDE) -> torch.Tensor:
    """Encoder map at ``stride`` for ``image`` (C, X, Y, Z) → (F, X/s, Y/s, Z/s); the decoder is skipped."""
    level = pyramid_level(backbone, stride)
    backbone.eval()
    parameter = next(backbone.parameters())
    features = backbone(image[None].to(parameter.device, parameter.dtype), decode=False)
    return features.pyramid[level][0].float().cpu()


def _fit_sample(vectors: np.ndarray, seed: int) -> np.ndarray:
    if len(vectors) <= MAX_FIT_VOXELS:
        return vectors
    return vectors[np.random.default_rng(seed).choice(len(vectors), MAX_FIT_VOXELS, replace=False)]


def structure_maps(
    backbone: Backbone, image: torch.Tensor, stride: int = DEFAULT_STRIDE, clusters: int = DEFAULT_CLUSTERS, seed: int = 0
) -> StructureMaps:
    """PCA-RGB and k-means maps of ``backbone``'s features for ``image`` (C, X, Y, Z), upsampled to the image."""
    features = patch_features(backbone, image, stride)  # (F, x, y, z)
    grid = features.shape[1:]
    pooled = F.adaptive_avg_pool3d(image[:1].float()[None], grid)[0, 0].numpy()  # image at feature resolution
    body = foreground_mask(pooled)
    if body.sum() < clusters:
        body = np.ones_like(body)
    vectors = features.reshape(features.shape[0], -1).T.numpy()  # (x·y·z, F)
    mean, std = vectors[body.ravel()].mean(0), vectors[body.ravel()].std(0) + 1e-6
    vectors = (vectors - mean) / std
    fit = _fit_sample(vectors[body.ravel()], seed)

    pca = PCA(n_components=3, random_state=seed).fit(fit)
    components = pca.transform(vectors)
    low, high = np.percentile(components[body.ravel()], PCA_PERCENTILES, axis=0)
    rgb = np.clip((components - low) / np.maximum(high - low, 1e-6), 0, 1).reshape(*grid, 3)
    rgb[~body] = 0.0
    labels = KMeans(n_clusters=clusters, n_init=3, random_state=seed).fit(fit).predict(vectors).reshape(grid)
    labels[~body] = -1

    size = tuple(image.shape[1:])
    rgb_full = F.interpolate(torch.from_numpy(rgb).permute(3, 0, 1, 2)[None].float(), size=size, mode="trilinear", align_corners=False)
    labels_full = F.interpolate(torch.from_numpy(labels)[None, None].float(), size=size, mode="nearest")
    ratios = tuple(float(r) for r in pca.explained_variance_ratio_)
    return StructureMaps(
        image=image[0].float().cpu().numpy(),
        rgb=rgb_full[0].permute(1, 2, 3, 0).clamp(0, 1).numpy(),
        clusters=labels_full[0, 0].long().numpy(),
        stride=stride,
        explained_variance=ratios,  # type: ignore[arg-type]
    )


def plot_structure_maps(maps: StructureMaps, path: str | Path, spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "") -> Path:
    """3×3 PNG: image, PCA-RGB and k-means overlay on axial / coronal / sagittal slices."""
    centre = slice_centre(maps.image)
    specs = slice_specs(spacing)
    figure = Figure(figsize=(10, 10), dpi=FIGURE_DPI, layout="constrained")
    axes = figure.subplots(3, len(specs))
    clusters = np.ma.masked_less(maps.clusters, 0)
    for column, spec in enumerate(specs):
        index = centre[spec.axis]
        image = take_slice(maps.image, spec.axis, index)
        axes[0, column].imshow(image, cmap="gray", origin="lower", aspect=spec.aspect)
        axes[0, column].set_title(f"{spec.view} ({'xyz'[spec.axis]}={index})")
        axes[1, column].imshow(take_slice(maps.rgb, spec.axis, index), origin="lower", aspect=spec.aspect)
        axes[2, column].imshow(image, cmap="gray", origin="lower", aspect=spec.aspect)
        axes[2, column].imshow(
            take_slice(clusters, spec.axis, index), cmap="tab10", vmin=0, vmax=9,
            alpha=CLUSTER_ALPHA, origin="lower", aspect=spec.aspect, interpolation="nearest",
        )
    for row, label in enumerate(("image", "features: PCA → RGB", f"features: k-means (k={int(maps.clusters.max()) + 1})")):
        axes[row, 0].set_ylabel(label)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    variance = " / ".join(f"{v:.0%}" for v in maps.explained_variance)
    figure.suptitle(f"{title} — stride-{maps.stride} features; PCA explains {variance}".strip(" —"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
