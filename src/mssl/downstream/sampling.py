"""Training patches for segmentation: the patch size chosen from the data, foreground oversampling, and
the stream of cases and patches each process draws.

nnU-Net's two choices that matter most when labels are few: patches as large as the volume and memory
allow (context decides which organ a voxel belongs to), and a fixed share of patches centred on a voxel
of a labelled class (small organs are otherwise rarely seen). Both are MONAI transforms here.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import DataLoader, Dataset, list_data_collate
from torch.utils.data import RandomSampler

from mssl.config import Size3
from mssl.downstream.last_checkpoint import skip_draws


def automatic_roi(shapes: Sequence[Sequence[int]], stride: int, max_voxels: int) -> Size3:
    """The median spatial shape, rounded up to a multiple of ``stride``, shrunk (largest axis first, one
    stride at a time) until it holds at most ``max_voxels``."""
    if not shapes:
        raise ValueError("no volumes to derive a patch size from")
    median = np.median(np.asarray([list(s)[-3:] for s in shapes], dtype=float), axis=0)
    roi = [max(stride, math.ceil(m / stride) * stride) for m in median]
    while math.prod(roi) > max_voxels and max(roi) > stride:
        largest = int(np.argmax(roi))
        roi[largest] -= stride
    if math.prod(roi) > max_voxels:
        raise ValueError(f"max_roi_voxels {max_voxels} is below the smallest patch the network takes ({stride}³)")
    return (roi[0], roi[1], roi[2])


def patch_sampler(roi: Sequence[int], num_classes: int, foreground_fraction: float, num_samples: int = 1) -> mt.Compose:
    """Pad to ``roi``, then per draw: with probability ``foreground_fraction`` a patch centred on a voxel of
    a foreground class (classes equally likely; classes absent from the case are skipped), otherwise a
    patch at a uniformly random position. Returns ``num_samples`` patches per case (a list)."""
    keys = ["image", "label"]
    roi = tuple(int(r) for r in roi)
    on_foreground = mt.RandCropByLabelClassesd(
        keys,
        label_key="label",
        spatial_size=roi,
        ratios=[0.0] + [1.0] * (num_classes - 1),
        num_classes=num_classes,
        num_samples=num_samples,
        warn=False,
    )
    anywhere = mt.RandSpatialCropSamplesd(keys, roi_size=roi, num_samples=num_samples, random_size=False)
    return mt.Compose(
        [
            mt.SpatialPadd(keys, spatial_size=roi),
            mt.OneOf([on_foreground, anywhere], weights=[foreground_fraction, 1.0 - foreground_fraction]),
        ]
    )


def stream_seed(*keys: int) -> int:
    """A seed for the stream named by ``keys`` (run seed, rank, step): distinct keys never share a stream,
    as ``seed + rank`` would (rank 1 of seed 0 is rank 0 of seed 1)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def training_loader(
    dataset: Dataset, batch_size: int, total_steps: int, done_steps: int, seed: int, rank: int, num_workers: int = 0
) -> DataLoader:
    """Batches of ``batch_size`` cases drawn with replacement (every step holds ``batch_size`` cases even when
    there are fewer), from step ``done_steps`` on, with random patches and augmentation.

    Every process (DDP rank) draws its own cases and patches, reproducibly: the case order is seeded by
    (``seed``, ``rank``) and replayed past the steps already done, the patch and augmentation stream by
    (``seed``, ``rank``, ``done_steps``) through the loader's generator, from which MONAI's DataLoader seeds
    the dataset's random transforms (and its workers).
    """
    cases = RandomSampler(
        dataset, replacement=True, num_samples=total_steps * batch_size, generator=torch.Generator().manual_seed(stream_seed(seed, rank))
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=skip_draws(cases, done_steps * batch_size),
        num_workers=num_workers,
        collate_fn=list_data_collate,
        generator=torch.Generator().manual_seed(stream_seed(seed, rank, done_steps)),
    )
