"""GVSL appearance damage of image A, batched in torch on the image's device (Models-Genesis style).

Three stages, in this order, each drawn independently per sample:
1. local pixel shuffle (probability ``shuffle_prob``): ``SHUFFLE_BLOCKS`` blocks of ⌊S/20⌋ voxels per
   axis cut from the input; each block's voxels get their own permutation (the official code shared one
   permutation by all blocks); blocks are written back in order, so later ones win where they overlap;
2. Bézier intensity curve (``bezier_prob``): monotone cubic curve through (0,0), (r1,r2), (r3,r4), (1,1);
3. in-painting (``inpaint_prob``, always on officially): 1 to ``INPAINT_MAX_BOXES`` boxes (another one
   with probability ``INPAINT_CONTINUE``), sides in [S/10, S/5), filled with U[0, 1) noise.

Inputs in [0, 1] (the CT preset) are damaged as they are and stay in [0, 1]; other ranges are mapped
to [0, 1] and back (see ``damage_appearance``).
"""

from __future__ import annotations

from typing import Callable

import torch

SHUFFLE_BLOCKS = 5000
SHUFFLE_BLOCK_FRACTION = 20  # block side = size // 20 per axis
MIN_SHUFFLE_BLOCK = 2  # small crops still get a real shuffle (a 1-voxel block permutes nothing)
BEZIER_SAMPLES = 1000
INPAINT_MAX_BOXES = 30
INPAINT_CONTINUE = 0.95
INPAINT_MARGIN = 3  # box corners stay this many voxels from the border


def _rand(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=torch.float32)


def _randint(
    low: torch.Tensor | int,
    high: torch.Tensor | int,
    shape: tuple[int, ...],
    like: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Uniform integers in [low, high) (broadcast tensors allowed)."""
    return (low + _rand(shape, like, generator) * (high - low)).floor().long()


def local_pixel_shuffle(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shuffle voxels inside many small random blocks, each block with its own permutation. (B, C, X, Y, Z)."""
    batch, channels, *shape = images.shape
    block = [max(MIN_SHUFFLE_BLOCK, n // SHUFFLE_BLOCK_FRACTION) for n in shape]
    if any(b > n for b, n in zip(block, shape)):
        return images
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1], device=images.device)
    offsets = torch.stack(torch.meshgrid(*[torch.arange(b, device=images.device) for b in block], indexing="ij"))
    offsets = (offsets.reshape(3, -1).T * strides).sum(-1)  # (V,) linear offsets inside a block
    high = torch.tensor([n - b + 1 for n, b in zip(shape, block)], device=images.device)
    corners = _randint(0, high, (batch, SHUFFLE_BLOCKS, 3), images, generator)
    index = (corners * strides).sum(-1, keepdim=True) + offsets  # (B, N, V) voxel of each block element
    permutation = _rand(tuple(index.shape), images, generator).argsort(dim=-1)
    source = index.gather(-1, permutation)  # element j of each block reads voxel source[j]
    # Later blocks win where blocks overlap: keep, per voxel, only the write of the highest block number.
    index, source = index.flatten(1), source.flatten(1)  # (B, N·V)
    order = torch.arange(index.shape[1], device=images.device).expand_as(index)
    volume = shape[0] * shape[1] * shape[2]
    winner = torch.full((batch, volume), -1, device=images.device, dtype=torch.long)
    winner.scatter_reduce_(1, index, order, reduce="amax")
    keep = winner.gather(1, index) == order
    shift = torch.arange(batch, device=images.device).view(batch, 1) * volume  # into the (B·V_total,) layout
    target, source = (index + shift)[keep], (source + shift)[keep]
    flat = images.transpose(0, 1).reshape(channels, batch * volume)  # (C, B·V_total)
    out = flat.clone()
    out[:, target] = flat[:, source]
    out = out.view(channels, batch, *shape).transpose(0, 1)
    return out.contiguous()


def bezier_intensity(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Map intensities through a random monotone cubic Bézier curve per sample. (B, C, X, Y, Z) in [0, 1]."""
    batch = images.shape[0]
    inner = _rand((batch, 2, 2), images, generator)  # control points (r1, r2), (r3, r4)
    zero, one = torch.zeros_like(inner[:, :1]), torch.ones_like(inner[:, :1])
    points = torch.cat([zero, inner, one], dim=1)  # (B, 4, 2)
    t = torch.linspace(0, 1, BEZIER_SAMPLES, device=images.device).view(1, -1, 1)
    bernstein = torch.cat([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], dim=-1)  # (1, K, 4)
    curve = bernstein @ points  # (B, K, 2)
    xs, ys = curve[..., 0].sort(dim=-1).values, curve[..., 1].sort(dim=-1).values
    values = images.float().clamp(0, 1).reshape(batch, -1)
    right = torch.searchsorted(xs, values).clamp(1, BEZIER_SAMPLES - 1)
    left = right - 1
    x0, x1, y0, y1 = xs.gather(1, left), xs.gather(1, right), ys.gather(1, left), ys.gather(1, right)
    weight = ((values - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0, 1)
    return (y0 + weight * (y1 - y0)).view_as(images).to(images.dtype)


def inpaint(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill 1–30 random boxes per sample with uniform noise. (B, C, X, Y, Z)."""
    batch, channels, *shape = images.shape
    # Box k exists while every continuation draw before it succeeded (the first box always exists).
    go_on = _rand((batch, INPAINT_MAX_BOXES), images, generator) < INPAINT_CONTINUE
    go_on[:, 0] = True
    exists = go_on.long().cumprod(dim=1).bool()  # (B, K)
    masks = []
    for n in shape:
        low, high = max(1, n // 10), max(2, n // 5)
        side = _randint(low, high, (batch, INPAINT_MAX_BOXES), images, generator)
        start_high = (n - side - INPAINT_MARGIN).clamp_min(INPAINT_MARGIN + 1)
        start = _randint(INPAINT_MARGIN, start_high, (batch, INPAINT_MAX_BOXES), images, generator)
        coord = torch.arange(n, device=images.device).view(1, 1, n)
        masks.append(((coord >= start[..., None]) & (coord < (start + side)[..., None])).float())  # (B, K, n)
    masks[0] = masks[0] * exists[..., None]
    covered = torch.einsum("bkx,bky,bkz->bxyz", *masks) > 0  # (B, X, Y, Z)
    noise = _rand(tuple(images.shape), images, generator).to(images.dtype)
    return torch.where(covered.unsqueeze(1), noise, images)


Stage = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _gate(stage: Stage, images: torch.Tensor, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    """Apply ``stage`` to the samples that win a ``prob`` draw (only those are computed)."""
    chosen = _rand((images.shape[0],), images, generator) < prob
    if not chosen.any():
        return images
    if chosen.all():
        return stage(images, generator)
    out = images.clone()
    out[chosen] = stage(images[chosen], generator)
    return out


@torch.no_grad()
def damage_appearance(
    images: torch.Tensor,
    shuffle_prob: float,
    bezier_prob: float,
    inpaint_prob: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Appearance-damaged copy of ``images`` (B, C, X, Y, Z); deterministic for a seeded ``generator``.

    The stages work on [0, 1]; a channel with values outside it (e.g. z-scored MRI) is mapped linearly from
    [min(its min, 0), max(its max, 1)] to [0, 1] and back, so the output stays within that range. Each
    channel is mapped on its own, so a channel of wide range does not squash the others.
    """
    low = images.amin(dim=(2, 3, 4), keepdim=True).clamp(max=0)
    span = images.amax(dim=(2, 3, 4), keepdim=True).clamp(min=1) - low
    damaged = (images - low) / span
    damaged = _gate(local_pixel_shuffle, damaged, shuffle_prob, generator)
    damaged = _gate(bezier_intensity, damaged, bezier_prob, generator)
    damaged = _gate(inpaint, damaged, inpaint_prob, generator)
    return damaged * span + low
