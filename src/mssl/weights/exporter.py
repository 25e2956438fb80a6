"""``mssl export RUN``: the trained encoder of a run as plain weights plus a provenance sidecar.

The student backbone (``method.backbone.*`` in the Lightning checkpoint) is written under its own
names, which are MONAI's for ``swin`` (``swinViT.*``, ``encoder*``, ``decoder*``: loads into
``monai.networks.nets.SwinUNETR``) and the documented ``encoders.{i}.*`` / ``decoders.{j}.conv.*``
for ``unet`` (loads into :class:`mssl.models.backbones.UNetBackbone`). Before anything is written the
weights are loaded into a freshly built backbone (strictly, but for the decoder an S²DC student never
had), so a broken export fails here, not at fine-tuning time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from mssl.runs import ExportFolder, PretrainRun
from mssl.weights.run_reader import export_sidecar, exported_state, full_backbone_state, read_run
from mssl.weights.safe_io import write_safetensors
from mssl.weights.sidecar import METADATA_KEY, write_sidecar

ExportFormat = Literal["monai", "torch", "nnunet"]


def export(run: str | Path, out: str | Path | None = None, format: ExportFormat = "monai", in_channels: int | None = None) -> Path:
    """Export the encoder of ``run`` to ``out`` (default RUN/export); returns the weight file.

    ``monai``: ``encoder.safetensors`` (no pickle; the sidecar is embedded in its header too);
    ``torch``: ``encoder.pt``, a plain state dict readable with ``torch.load(weights_only=True)``.
    Both come with ``encoder.json``. ``nnunet``: see :func:`mssl.weights.nnunet.export_nnunet`, whose
    stem ``in_channels`` adapts to the target dataset (nnU-Net loads only matching shapes).
    """
    if format == "nnunet":
        from mssl.weights.nnunet import export_nnunet  # it needs nnU-Net's optional packages

        return export_nnunet(run, out, in_channels)
    if in_channels is not None:
        raise ValueError("in_channels applies to format='nnunet' only (`mssl inspect --in-channels` adapts other exports)")
    run = Path(run)
    weights = ExportFolder(out if out is not None else PretrainRun(run).export.path).weights(format)
    checkpoint_file, checkpoint, config = read_run(run)
    tensors, initialised_decoder = full_backbone_state(config, exported_state(checkpoint_file, checkpoint), str(checkpoint_file))
    sidecar = export_sidecar(config, checkpoint, run, tensors, initialised_decoder)
    if format == "monai":
        write_safetensors(tensors, weights, {METADATA_KEY: sidecar.to_json()})
    else:
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, weights)
    write_sidecar(sidecar, weights)
    return weights
