"""Downstream networks whose encoder keys equal the pre-trained backbone's, so exports load unchanged.

Key layouts:
- swin: ``monai.networks.nets.SwinUNETR`` itself (``swinViT.*`` encoder, ``encoder1..4,10.*`` and
  ``decoder1..5.*`` convolutional blocks, ``out.*`` head).
- unet segmentation: :class:`UNetSegmenter` = the GVSL U-Net (``encoders.{i}.*``, ``decoders.{j}.conv.*``)
  plus ``head.*``, a 1×1×1 convolution on the full-resolution decoder map.
- plainconv / resenc segmentation: :class:`NnUNetSegmenter` = nnU-Net's network with nnU-Net's key names
  (``encoder.*``, ``decoder.*``) whose segmentation layer is ``head.*`` (nnU-Net's last ``seg_layers``,
  the only one used without deep supervision).
- classification: :class:`EncoderClassifier` = ``backbone.*`` (the backbone's own keys) plus ``head.*``;
  pre-trained weights are loaded into ``network.backbone``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from mssl.config import BackboneConfig
from mssl.models.backbones import UNetBackbone, build_backbone, sdpa_window_attention
from mssl.models.features import Backbone
from mssl.models.nnunet_backbones import NnUNetBackbone
from mssl.nnunet_arch import NNUNET_CLASSES, NnUNetArchConfig

# parameter-name prefixes of the part a pre-training actually shapes (frozen with ``freeze_encoder``);
# nnU-Net's ``decoder.encoder`` is the same module as ``encoder``, so its parameters are named ``encoder.*``
ENCODER_PREFIXES = {"swin": ("swinViT.",), "unet": ("encoders.",), **{name: ("encoder.",) for name in NNUNET_CLASSES}}


class UNetSegmenter(UNetBackbone):
    """The GVSL U-Net with a 1×1×1 convolution head on its full-resolution decoder map.

    ``deep_supervision`` = n adds heads on the n next-coarser decoder maps (1/2, 1/4, … resolution); in
    training mode the forward pass then returns [full, 1/2, …] logits (as MONAI's DynUNet and nnU-Net do),
    in eval mode only the full-resolution logits, so inference and export see one output.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int], deep_supervision: int = 0) -> None:
        super().__init__(in_channels=in_channels, channels=channels)
        if not 0 <= deep_supervision < len(self.pyramid_channels) - 1:
            raise ValueError(f"deep_supervision must be in [0, {len(self.pyramid_channels) - 2}] for widths {tuple(channels)}, got {deep_supervision}")
        self.head = nn.Conv3d(self.local_channels, num_classes, kernel_size=1)
        self.auxiliary_heads = nn.ModuleList(nn.Conv3d(c, num_classes, kernel_size=1) for c in self.pyramid_channels[1 : deep_supervision + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        if not (self.training and len(self.auxiliary_heads)):
            return self.head(super().forward(x, decode=True).local)
        maps = self.decoder_maps(super().forward(x, decode=False).pyramid)
        return [self.head(maps[0]), *(head(m) for head, m in zip(self.auxiliary_heads, maps[1:]))]


class NnUNetSegmenter(NnUNetBackbone):
    """nnU-Net's PlainConvUNet / ResidualEncoderUNet (no deep supervision) with a 1×1×1 convolution head
    on its full-resolution decoder map."""

    def __init__(self, name: str, in_channels: int, num_classes: int, arch: NnUNetArchConfig) -> None:
        super().__init__(name, in_channels, arch)
        self.head = nn.Conv3d(self.local_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.head(super().forward(x, decode=True).local)


class EncoderClassifier(nn.Module):
    """Global-average-pooled bottleneck of a backbone → dropout → linear (classes or one regression output)."""

    def __init__(self, backbone: Backbone, num_outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.bottleneck_channels, num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottleneck = self.backbone(x, decode=False).bottleneck  # (B, C, *S / stride)
        return self.head(bottleneck.flatten(2).mean(-1))


DEFAULT_DEEP_SUPERVISION = 2  # auxiliary outputs at 1/2 and 1/4 resolution (measured: benchmarks/results/finetune_convergence.md)


def deep_supervision_levels(backbone: BackboneConfig, requested: int | None) -> int:
    """The auxiliary outputs a fine-tuning trains: ``requested``, or by default 2 for the U-Net (fewer when it
    has fewer decoder levels) and none for the other backbones."""
    if requested is not None:
        return requested
    return min(DEFAULT_DEEP_SUPERVISION, len(backbone.unet_channels) - 2) if backbone.name == "unet" else 0


def build_segmentation_network(backbone: BackboneConfig, num_classes: int, deep_supervision: int = 0) -> nn.Module:
    """SwinUNETR (MONAI), the project's U-Net or nnU-Net's network with ``num_classes`` output channels
    (background included); ``deep_supervision`` auxiliary outputs (U-Net only)."""
    if backbone.name == "swin":
        return sdpa_window_attention(
            SwinUNETR(
                in_channels=backbone.in_channels,
                out_channels=num_classes,
                feature_size=backbone.feature_size,
                window_size=backbone.window_size,
                use_v2=backbone.use_v2,
                use_checkpoint=backbone.gradient_checkpointing,
                spatial_dims=3,
            )
        )
    if deep_supervision and backbone.name != "unet":
        raise ValueError(f"deep supervision needs the unet backbone, not {backbone.name}")
    if backbone.name in NNUNET_CLASSES:
        return NnUNetSegmenter(backbone.name, backbone.in_channels, num_classes, backbone.nnunet)
    return UNetSegmenter(backbone.in_channels, num_classes, backbone.unet_channels, deep_supervision)


def finetuned_network(description: dict[str, Any]) -> nn.Module:
    """The untrained network a fine-tuning run's ``model.json`` describes (task, backbone, outputs)."""
    backbone = BackboneConfig(**description["backbone"])
    if description["task"] == "seg":
        return build_segmentation_network(backbone, description["num_classes"], description.get("deep_supervision", 0))
    return build_classifier(backbone, description["num_outputs"])


def freeze_encoder(network: nn.Module, backbone: BackboneConfig) -> int:
    """Stop gradients into the pre-trained encoder part; returns how many tensors were frozen."""
    prefixes = ENCODER_PREFIXES[backbone.name]
    frozen = 0
    for name, parameter in network.named_parameters():
        if name.removeprefix("backbone.").startswith(prefixes):
            parameter.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ValueError(f"no parameter of {type(network).__name__} starts with {prefixes}: nothing to freeze")
    return frozen


def build_classifier(backbone: BackboneConfig, num_outputs: int, dropout: float = 0.0) -> EncoderClassifier:
    """A pooled-encoder classifier (num_outputs ≥ 2) or regressor (num_outputs = 1)."""
    return EncoderClassifier(build_backbone(backbone), num_outputs, dropout)


def output_layer(network: nn.Module) -> nn.Conv3d:
    """The 1×1×1 convolution that produces a segmentation network's class logits."""
    if isinstance(network, SwinUNETR):
        return network.out.conv.conv
    if isinstance(network, (UNetSegmenter, NnUNetSegmenter)):
        return network.head
    raise TypeError(f"no known output layer in {type(network).__name__}")


@torch.no_grad()
def initialise_class_prior(network: nn.Module, voxel_counts: torch.Tensor) -> None:
    """Output biases = log class frequencies, so the untrained network already predicts the class prior.

    A network starting at uniform class probabilities spends its first hundreds of steps only learning
    that almost every voxel is background, and its small-organ gradients vanish meanwhile (the softmax
    saturates towards background). Starting at the prior (as RetinaNet's focal-loss paper does for
    rare classes) measured on one OpenKBP case, 150 steps: mean Dice 0.10 → 0.23 (SGD), 0.63 (AdamW).
    """
    frequencies = (voxel_counts.double() + 1.0) / (voxel_counts.double() + 1.0).sum()  # +1: no class at log 0
    for layer in [output_layer(network), *getattr(network, "auxiliary_heads", [])]:
        layer.bias.copy_(frequencies.log().float())
