"""What every downstream run settles first: dataset, backbone, preprocessing, device/precision (Fabric)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lightning.fabric import Fabric

from mssl.config import BackboneConfig, input_size_problem
from mssl.data.preprocess import PresetConfig
from mssl.downstream.config import DataConfig, FinetuneConfig
from mssl.downstream.datasets import Dataset, load_dataset
from mssl.downstream.pretrained import PretrainedInfo, describe_weights


@dataclass
class DownstreamSetup:
    dataset: Dataset
    backbone: BackboneConfig
    preset: PresetConfig
    pretrained: PretrainedInfo | None

    def match_channels(self, channels: int) -> None:
        """Give the backbone the data's input channels: a scratch network takes them, pre-trained weights
        for another count are a one-line error."""
        if self.pretrained is None:
            self.backbone = self.backbone.model_copy(update={"in_channels": channels})
        elif self.backbone.in_channels != channels:
            raise ValueError(
                f"{self.pretrained.path}: the encoder was pre-trained on {self.backbone.in_channels}-channel images "
                f"but {self.dataset.path} has {channels} channels; use weights pre-trained on {channels}-channel data"
            )


def resolve_setup(config: DataConfig, weights: Path | None, backbone: BackboneConfig) -> DownstreamSetup:
    """Backbone and preprocessing follow the weights' sidecar unless the config says otherwise.

    Preset: explicit name > the weights' preset > the dataset's modality. Spacing: explicit > the weights'.
    """
    dataset = load_dataset(config.data, config.test_fraction, config.validation_fraction)
    pretrained = describe_weights(weights) if weights is not None else None
    if pretrained is not None:
        backbone = pretrained.backbone
    preset = (pretrained.preset if pretrained else None) or PresetConfig(name=dataset.default_preset())
    if config.preset is not None and config.preset != preset.name:
        preset = PresetConfig(name=config.preset, spacing=preset.spacing)
    if config.spacing is not None:
        preset = PresetConfig(**{**preset.model_dump(), "spacing": config.spacing})
    return DownstreamSetup(dataset, backbone, preset, pretrained)


def make_fabric(accelerator: str, devices: int, precision: str, seed: int) -> Fabric:
    """Lightning Fabric: precision, devices and DDP without our own distributed code; seeded."""
    fabric = Fabric(accelerator=accelerator, devices=devices, precision=precision)  # type: ignore[arg-type]
    fabric.launch()
    fabric.seed_everything(seed, workers=True, verbose=False)
    return fabric


def check_roi(roi: Sequence[int], backbone: BackboneConfig, decode: bool = True) -> None:
    """A patch the network takes (stride, SwinUNETR's bottleneck when its decoder runs), or one clear error."""
    problem = input_size_problem(backbone, roi, decode)
    if problem:
        raise ValueError(f"roi {problem}")


def start_finetune(config: FinetuneConfig) -> tuple[DownstreamSetup, Fabric, Path]:
    """What every fine-tuning task does first: resolve data and weights, check a given roi against the
    network's stride, start Fabric and create the run folder."""
    setup = resolve_setup(config, config.weights, config.backbone)
    if config.roi is not None:
        check_roi(config.roi, setup.backbone, decode=config.task == "seg")  # classification pools the encoder only
    # a dry run measures one device; its projection scales to config.devices
    fabric = make_fabric(config.accelerator, 1 if config.dry_run else config.devices, config.precision, config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    return setup, fabric, out
