"""Adapt a first-layer convolution to a different number of input channels.

Pre-trained CT/MRI encoders see one channel; downstream data may have several (multi-sequence MRI)
or the reverse. The adapted kernel treats the new channels as cyclic copies of the old ones and
rescales so that the layer's response is unchanged when the input channels really are copies:

- more channels (C_new ≥ C_old): ``W_new[:, j] = W_old[:, j mod C_old] · C_old / C_new``; exact
  whenever C_new is a multiple of C_old and channel j carries a copy of channel ``j mod C_old``.
- fewer channels: ``W_new[:, j] = Σ_{i mod C_new = j} W_old[:, i]``; exact when the old input was the
  new one repeated cyclically.
"""

from __future__ import annotations

import torch


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """``weight`` (C_out, C_old, *kernel) → (C_out, channels, *kernel), response-preserving as above."""
    if weight.ndim < 3:
        raise ValueError(f"expected a convolution kernel (C_out, C_in, *kernel), got shape {tuple(weight.shape)}")
    if channels < 1:
        raise ValueError(f"channels must be ≥ 1, got {channels}")
    old = weight.shape[1]
    if channels >= old:
        index = torch.arange(channels, device=weight.device) % old
        return weight.index_select(1, index) * (old / channels)
    groups = torch.arange(old, device=weight.device) % channels  # new channel each old channel folds into
    adapted = weight.new_zeros(weight.shape[0], channels, *weight.shape[2:])
    return adapted.index_add_(1, groups, weight)


def is_input_channel_mismatch(source: torch.Size, target: torch.Size) -> bool:
    """True when two kernels differ only in their input-channel axis (dim 1)."""
    return (
        len(source) == len(target) >= 3
        and source[0] == target[0]
        and source[2:] == target[2:]
        and source[1] != target[1]
    )
