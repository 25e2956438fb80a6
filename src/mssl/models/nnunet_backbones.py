"""nnU-Net's own networks (``dynamic_network_architectures``) behind mssl's ``Features`` interface.

The backbone owns the ``encoder`` and ``decoder`` of a ``PlainConvUNet`` / ``ResidualEncoderUNet``
built exactly as nnU-Net v2 builds it from plans (same classes, ``arch_kwargs`` and initialisation),
minus the segmentation layers. Its ``state_dict`` therefore has nnU-Net's key names and shapes
(``encoder.*``, ``decoder.encoder.*``, ``decoder.stages.*``, ``decoder.transpconvs.*``), which is
what ``nnUNetv2_train -pretrained_weights`` checks for every tensor but ``.seg_layers.``.
"""

from __future__ import annotations

import itertools
import pydoc
from typing import Any

import torch
from torch import nn

from mssl.models.features import Backbone, Features
from mssl.nnunet_arch import NNUNET_CLASSES, REQUIRES_IMPORT, NnUNetArchConfig

INSTALL_HINT = "pip install 'mssl[nnunet]'"


def build_nnunet_network(name: str, in_channels: int, arch: NnUNetArchConfig, num_classes: int = 1) -> nn.Module:
    """The network nnU-Net builds from the plans ``arch.arch_kwargs(name)`` (classes resolved as nnU-Net does)."""
    try:
        import dynamic_network_architectures  # noqa: F401
    except ImportError:
        raise ImportError(f"backbone {name!r} needs nnU-Net's dynamic_network_architectures: {INSTALL_HINT}") from None
    kwargs: dict[str, Any] = arch.arch_kwargs(name)
    for key in REQUIRES_IMPORT:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    network_class = pydoc.locate(NNUNET_CLASSES[name])
    network = network_class(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kwargs)
    network.apply(network.initialize)  # He init (+ zeroed last norm of each residual block), as nnU-Net does
    return network


class NnUNetBackbone(Backbone):
    """Encoder + decoder of an nnU-Net U-Net; pyramid = encoder stages, local = last decoder stage (full resolution)."""

    normalised_bottleneck = True  # InstanceNorm in every encoder stage

    def __init__(self, name: str, in_channels: int, arch: NnUNetArchConfig) -> None:
        super().__init__()
        network = build_nnunet_network(name, in_channels, arch)
        self.encoder = network.encoder
        self.decoder = network.decoder
        del self.decoder.seg_layers  # the task head is the downstream user's; nnU-Net skips these keys anyway
        strides = tuple(arch.strides or ())
        self.pyramid_strides = tuple(itertools.accumulate(strides, lambda a, b: a * b))
        self.stride = self.pyramid_strides[-1]
        self.pyramid_channels = tuple(arch.features_per_stage or ())
        self.local_channels = self.pyramid_channels[0]
        self.decoder_names = ("decoder",)
        self.network = name

    def forward(self, x: torch.Tensor, decode: bool = True) -> Features:
        self.check_size(x.shape[2:])
        self._check_decode(decode)
        skips = self.encoder(x)  # finest first, bottleneck last
        local = None
        if decode:  # nnU-Net's decoder without its segmentation layers
            local = skips[-1]
            for transpconv, stage, skip in zip(self.decoder.transpconvs, self.decoder.stages, reversed(skips[:-1])):
                local = stage(torch.cat([transpconv(local), skip], dim=1))
        return Features(pyramid=list(skips), bottleneck=skips[-1], local=local)
