"""GVSL's shared spatial augmentation: one random affine + elastic transform per sample, applied identically
to every image handed in (clean A, damaged A, B), with a single ``grid_sample`` through ``mssl.models.warp``.

It is not in the paper but on in the official code; because A and B get the same transform it adds
diversity without creating a correspondence target. The official order (affine warp, then elastic
warp) is exactly ``warp(x, affine, elastic_flow)``, here sampled once instead of twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from mssl.models.warp import affine_matrix, warp


def _uniform(low: float, high: float, shape: tuple[int, ...], device: torch.device,
             generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def smooth_noise(batch: int, shape: Sequence[int], sigma: torch.Tensor, device: torch.device,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """U(−1, 1) noise (B, 3, X, Y, Z) smoothed by a unit-sum Gaussian of per-sample width ``sigma`` (B,) voxels.

    The Gaussian is applied in the Fourier domain (periodic borders): at σ ≈ 10 the official radius-4σ
    spatial kernel would cost ~100 taps per axis per voxel.
    """
    noise = _uniform(-1.0, 1.0, (batch, 3, *shape), device, generator)
    spectrum = torch.fft.rfftn(noise, dim=(2, 3, 4))
    freqs = [torch.fft.fftfreq(n, device=device) for n in shape[:2]] + [torch.fft.rfftfreq(shape[2], device=device)]
    radius2 = sum(f.view([-1 if i == axis else 1 for i in range(3)]) ** 2 for axis, f in enumerate(freqs))
    transfer = torch.exp(-2 * math.pi**2 * sigma.view(-1, 1, 1, 1, 1) ** 2 * radius2)  # (B, 1, X, Y, Z/2+1)
    return torch.fft.irfftn(spectrum * transfer, s=tuple(shape), dim=(2, 3, 4))


@dataclass(frozen=True)
class SpatialAugmentation:
    """Random ``[Sh·S·Rz·Ry·Rx | t]`` plus an elastic flow, shared by all images of a sample.

    ``shift_fraction`` is a fraction of the half extent ``(size - 1) / 2`` (normalised coordinates, as in
    the official code): 0.1 moves the image by up to 5 % of its side.
    """

    rotation_deg: float
    scale_range: tuple[float, float]
    shear_deg: float
    shift_fraction: float
    elastic_alpha: tuple[float, float]
    elastic_sigma: tuple[float, float]

    def sample(self, batch: int, shape: Sequence[int], device: torch.device,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``(affine (B, 3, 4), flow (B, 3, X, Y, Z))`` for volumes of ``shape``, conventions of ``warp``."""
        rotation, shear = math.radians(self.rotation_deg), math.radians(self.shear_deg)
        half_extent = torch.tensor([(n - 1) / 2 for n in shape], device=device, dtype=torch.float32)
        affine = affine_matrix(
            rotation=_uniform(-rotation, rotation, (batch, 3), device, generator),
            scale=_uniform(*self.scale_range, (batch, 3), device, generator),
            shear=_uniform(-shear, shear, (batch, 6), device, generator),
            translation=_uniform(-self.shift_fraction, self.shift_fraction, (batch, 3), device, generator) * half_extent,
        )
        alpha = _uniform(*self.elastic_alpha, (batch,), device, generator)
        sigma = _uniform(*self.elastic_sigma, (batch,), device, generator)
        flow = alpha.view(-1, 1, 1, 1, 1) * smooth_noise(batch, shape, sigma, device, generator)
        return affine, flow

    @torch.no_grad()
    def __call__(self, *images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        """Warp every (B, C_i, X, Y, Z) image with the same per-sample transform (one ``grid_sample`` in all)."""
        first = images[0]
        if any(im.shape[0] != first.shape[0] or im.shape[2:] != first.shape[2:] for im in images):
            raise ValueError(f"spatial augmentation needs equal batch and spatial sizes, got {[tuple(i.shape) for i in images]}")
        affine, flow = self.sample(first.shape[0], first.shape[2:], first.device, generator)
        warped = warp(torch.cat(images, dim=1), affine, flow)
        return tuple(warped.split([im.shape[1] for im in images], dim=1))
