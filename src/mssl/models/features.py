"""The interface every backbone implements: ``backbone(x) -> Features``.

It sits apart from the backbones themselves (:mod:`mssl.models.backbones`) so that nnU-Net's networks
(:mod:`mssl.models.nnunet_backbones`) implement it without importing the module that builds them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from mssl.config import size_problem


@dataclass
class Features:
    """What a backbone hands to a method.

    pyramid: encoder maps from finest to coarsest, each (B, C_i, *S / s_i).
    bottleneck: the coarsest map (S²DC tokens, GVSL's global feature f^g).
    local: full-resolution decoder map (GVSL's f^l), None when the decoder was skipped.
    """

    pyramid: list[torch.Tensor]
    bottleneck: torch.Tensor
    local: torch.Tensor | None


class Backbone(nn.Module):
    """Common surface of every backbone: sizes, channels and the divisibility check."""

    network: str  # the BackboneConfig name
    normalised_bottleneck: bool = False  # instance-normalised in every forward pass: needs more than one voxel
    stride: int
    pyramid_channels: tuple[int, ...]
    pyramid_strides: tuple[int, ...]
    local_channels: int
    decoder_names: tuple[str, ...]  # submodules used only when decoding
    has_decoder: bool = True

    @property
    def bottleneck_channels(self) -> int:
        return self.pyramid_channels[-1]

    def check_size(self, spatial: Sequence[int]) -> None:
        """The config-time rule (:func:`mssl.config.size_problem`), for inputs that never went through a config."""
        problem = size_problem(spatial, self.stride, self.network, self.normalised_bottleneck)
        if problem:
            raise ValueError(f"input {problem}")

    def drop_decoder(self) -> None:
        """Delete the decoder in place, for backbones that never decode (S²DC's student and teacher).

        The Swin decoder alone holds ~54 M parameters (feature size 48) that would otherwise sit idle in
        memory, in every EMA update and in DDP's search for parameters without gradients.
        """
        if self.has_decoder:
            for name in self.decoder_names:
                delattr(self, name)
            self.has_decoder = False
            self.register_load_state_dict_pre_hook(_skip_decoder_tensors)

    def encoder_copy(self) -> "Backbone":
        """A frozen-ready deep copy without the decoder, for passes that never decode (EMA teachers)."""
        clone = copy.deepcopy(self)
        clone.drop_decoder()
        return clone

    def _check_decode(self, decode: bool) -> None:
        if decode and not self.has_decoder:
            raise RuntimeError(f"this {type(self).__name__} is an encoder-only copy; call it with decode=False")

    def forward(self, x: torch.Tensor, decode: bool = True) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError


def _skip_decoder_tensors(module: Backbone, state_dict: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """An encoder-only backbone ignores decoder tensors: S²DC checkpoints written before the student lost
    its decoder hold an untrained one, and must still resume and load strictly."""
    decoder = tuple(f"{prefix}{name}." for name in module.decoder_names)
    for key in [k for k in state_dict if k.startswith(decoder)]:
        del state_dict[key]
