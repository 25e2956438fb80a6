"""Backbones behind one interface: ``backbone(x) -> Features``.

Both methods run on every backbone. ``swin`` is MONAI's SwinUNETR (v2) without its output layer, so
its ``state_dict`` keys are exactly MONAI's (``swinViT.*``, ``encoder*``, ``decoder*``); ``unet`` is
the GVSL 3D U-Net; ``plainconv`` / ``resenc`` are nnU-Net's own networks (models/nnunet_backbones.py).
Spatial sizes must be divisible by ``backbone.stride``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from mssl.config import SWIN_STRIDE, BackboneConfig, unet_stride
from mssl.models.features import Backbone, Features
from mssl.nnunet_arch import NNUNET_CLASSES


def sdpa_window_attention(network: nn.Module) -> nn.Module:
    """Let MONAI run ``network``'s Swin window attention through ``scaled_dot_product_attention`` in no-grad
    passes (EMA teacher, probes, validation, sliding-window inference). MONAI keeps its explicit attention
    whenever gradients are on, so training passes are unchanged. 1.55-2.23× cheaper teacher passes on CPU at the
    same outputs (≤ 1.1e-5): benchmarks/results/layout_and_attention.md. MONAI before 1.6 ignores the flag.
    """
    for module in network.modules():
        if isinstance(module, WindowAttention):
            module.use_flash_attention = True
    return network


def channels_last(network: nn.Module) -> nn.Module:
    """Put ``network``'s convolution weights in channels-last-3d layout, so its convolutions, norms and resizes run
    channels-last on any input. Measured CPU time per training step (benchmarks/results/layout_and_attention.md):
    whole GVSL step 1.44× less on the 8-64 U-Net and 1.05× on the 32-512 one at 64³, fine-tuning step 1.63× less;
    never slower. Saved weights are made contiguous where they are written.
    """
    return network.to(memory_format=torch.channels_last_3d)


class SwinBackbone(Backbone, SwinUNETR):
    """MONAI SwinUNETR minus its output convolution; keys load 1:1 into ``SwinUNETR``."""

    network = "swin"

    def __init__(
        self,
        in_channels: int,
        feature_size: int,
        window_size: int,
        use_v2: bool,
        use_checkpoint: bool = False,
        dropout_path_rate: float = 0.0,
    ) -> None:
        SwinUNETR.__init__(
            self,
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            window_size=window_size,
            use_v2=use_v2,
            use_checkpoint=use_checkpoint,
            dropout_path_rate=dropout_path_rate,
            spatial_dims=3,
        )
        del self.out  # the task head is the downstream user's, not ours
        sdpa_window_attention(self)
        self.stride = SWIN_STRIDE
        self.pyramid_channels = tuple(feature_size * m for m in (1, 2, 4, 8, 16))
        self.pyramid_strides = (2, 4, 8, 16, 32)
        self.local_channels = feature_size
        self.decoder_names = ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10") + tuple(
            f"decoder{i}" for i in range(1, 6)
        )

    def forward(self, x: torch.Tensor, decode: bool = True) -> Features:
        self.check_size(x.shape[2:])
        self._check_decode(decode)
        hidden = self.swinViT(x, self.normalize)
        local = None
        if decode:
            enc0 = self.encoder1(x)
            enc1 = self.encoder2(hidden[0])
            enc2 = self.encoder3(hidden[1])
            enc3 = self.encoder4(hidden[2])
            dec4 = self.encoder10(hidden[4])
            dec3 = self.decoder5(dec4, hidden[3])
            dec2 = self.decoder4(dec3, enc3)
            dec1 = self.decoder3(dec2, enc2)
            dec0 = self.decoder2(dec1, enc1)
            local = self.decoder1(dec0, enc0)
        return Features(pyramid=list(hidden), bottleneck=hidden[-1], local=local)


def _group_norm(channels: int, channels_per_group: int = 8) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // channels_per_group), channels)


class DoubleConv(nn.Sequential):
    """(Conv3d 3³ → GroupNorm(8 ch/group) → LeakyReLU 0.2) × 2, the GVSL building block."""

    def __init__(self, in_channels: int, out_channels: int, channels_per_group: int = 8) -> None:
        super().__init__(
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            _group_norm(out_channels, channels_per_group),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            _group_norm(out_channels, channels_per_group),
            nn.LeakyReLU(0.2, inplace=True),
        )


class UpBlock(nn.Module):
    """Trilinear ×2, concatenate [skip, upsampled], DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=True)
        return self.conv(torch.cat([skip, x], dim=1))


class UNetBackbone(Backbone):
    """The GVSL 3D U-Net (the paper's widths 32-64-128-256-512), decoder back to the first width, Kaiming init.

    State-dict keys (documented for export): ``encoders.{i}.*`` (i = 0 full resolution … 4 bottleneck,
    each a DoubleConv after a 2× max-pool for i > 0) and ``decoders.{j}.conv.*`` (j = 0 coarsest).
    ``checkpoint_activations``: keep only each block's input while the graph is built and recompute the
    block's inner activations in the backward pass (less memory, one more forward per block).
    """

    network = "unet"

    def __init__(self, in_channels: int, channels: Sequence[int], checkpoint_activations: bool = False) -> None:
        super().__init__()
        self.checkpoint_activations = checkpoint_activations
        channels = tuple(channels)
        if len(channels) < 2:
            raise ValueError(f"unet needs at least 2 widths, got {channels}")
        self.encoders = nn.ModuleList(
            [DoubleConv(in_channels, channels[0])]
            + [DoubleConv(channels[i - 1], channels[i]) for i in range(1, len(channels))]
        )
        self.decoders = nn.ModuleList(
            UpBlock(channels[i], channels[i - 1], channels[i - 1]) for i in range(len(channels) - 1, 0, -1)
        )
        self.stride = unet_stride(channels)
        self.pyramid_channels = channels
        self.pyramid_strides = tuple(2**i for i in range(len(channels)))
        self.local_channels = channels[0]
        self.decoder_names = ("decoders",)
        self._init_weights()
        channels_last(self)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, decode: bool = True) -> Features:
        self.check_size(x.shape[2:])
        self._check_decode(decode)
        pyramid = []
        for i, encoder in enumerate(self.encoders):
            x = self._block(encoder, F.max_pool3d(x, 2) if i else x)
            pyramid.append(x)
        local = self.decoder_maps(pyramid)[0] if decode else None
        return Features(pyramid=pyramid, bottleneck=pyramid[-1], local=local)

    def decoder_maps(self, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every decoder output, finest first: map i is (B, channels[i], *S / 2**i), i < len(channels) - 1."""
        maps = [pyramid[-1]]
        for decoder, skip in zip(self.decoders, reversed(pyramid[:-1])):
            maps.append(self._block(decoder, maps[-1], skip))
        return maps[:0:-1]

    def _block(self, block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_activations and torch.is_grad_enabled():  # no-grad passes (EMA teacher) store nothing anyway
            return checkpoint(block, *inputs, use_reentrant=False)
        return block(*inputs)


def build_backbone(config: BackboneConfig) -> Backbone:
    """Construct the backbone a config names."""
    if config.name in NNUNET_CLASSES:
        from mssl.models.nnunet_backbones import NnUNetBackbone  # optional dependency

        return NnUNetBackbone(config.name, config.in_channels, config.nnunet)
    if config.name == "swin":
        return SwinBackbone(
            in_channels=config.in_channels,
            feature_size=config.feature_size,
            window_size=config.window_size,
            use_v2=config.use_v2,
            use_checkpoint=config.gradient_checkpointing,
        )
    return UNetBackbone(config.in_channels, config.unet_channels, checkpoint_activations=config.gradient_checkpointing)
