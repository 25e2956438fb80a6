"""``encoder.json``: everything needed to rebuild, trust and reuse an exported encoder.

The sidecar names the method, the backbone class with its constructor arguments (so a reader builds
the right network without guessing), the input channels, the preprocessing the encoder was trained
on (spacing, intensity preset), the crop size, the number of steps, the data index hash, the resolved
run config and the package versions. The same JSON is embedded in the safetensors header, so the
weights stay self-describing when the sidecar is lost.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, get_args

from mssl.config import BackboneConfig, BackboneName
from mssl.nnunet_arch import NNUNET_CLASSES

SIDECAR_FORMAT = "mssl-encoder/1"
METADATA_KEY = "mssl.sidecar"  # key of the embedded sidecar in the safetensors header
SWIN_CLASS = "monai.networks.nets.SwinUNETR"
UNET_CLASS = "mssl.models.backbones.UNetBackbone"
VERSIONED_PACKAGES = ("mssl", "torch", "monai", "lightning", "safetensors", "numpy", "pydantic")
HASH_CHUNK = 1 << 20
BACKBONE_NAMES = get_args(BackboneName)


def backbone_spec(config: BackboneConfig) -> dict[str, Any]:
    """The class that loads the export and its constructor arguments (the task head is the user's)."""
    if config.name == "swin":
        args = {
            "in_channels": config.in_channels,
            "feature_size": config.feature_size,
            "window_size": config.window_size,
            "use_v2": config.use_v2,
            "spatial_dims": 3,
        }
        return {"name": "swin", "class": SWIN_CLASS, "args": args}
    if config.name in NNUNET_CLASSES:  # rebuilt by BackboneConfig(name, **args); arch_kwargs for nnU-Net's plans
        args = {"in_channels": config.in_channels, "nnunet": config.nnunet.model_dump(mode="json", exclude={"plans"})}
        return {"name": config.name, "class": NNUNET_CLASSES[config.name], "args": args, "arch_kwargs": config.nnunet.arch_kwargs(config.name)}
    return {"name": "unet", "class": UNET_CLASS, "args": {"in_channels": config.in_channels, "channels": list(config.unet_channels)}}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(weights_file: Path) -> Path:
    """``encoder.safetensors`` → ``encoder.json``."""
    return Path(weights_file).with_suffix(".json")


def read_sidecar(weights_file: Path) -> dict[str, Any] | None:
    """The sidecar of ``weights_file``: the JSON next to it, else the copy in the safetensors header."""
    from mssl.weights.safe_io import read_metadata

    path = sidecar_path(weights_file)
    if path.is_file():
        try:
            return _checked(json.loads(path.read_text(encoding="utf-8")), path)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    embedded = read_metadata(weights_file).get(METADATA_KEY)
    if not embedded:
        return None
    try:
        return _checked(json.loads(embedded), f"{weights_file} (header {METADATA_KEY})")
    except json.JSONDecodeError as error:
        raise ValueError(f"{weights_file}: header {METADATA_KEY} is not valid JSON ({error})") from None


def _checked(sidecar: Any, source: object) -> dict[str, Any]:
    """The sidecar if its shape is one readers can trust (an object; ``backbone`` naming a known backbone,
    with ``args`` a mapping), else a one-line ValueError: a damaged or hostile file must not crash a reader."""
    if not isinstance(sidecar, dict):
        raise ValueError(f"{source}: a sidecar must be a JSON object, got {type(sidecar).__name__}")
    backbone = sidecar.get("backbone")
    if backbone is not None and not (
        isinstance(backbone, dict) and backbone.get("name") in BACKBONE_NAMES and isinstance(backbone.get("args", {}), dict)
    ):
        raise ValueError(f"{source}: 'backbone' must look like {{\"name\": one of {list(BACKBONE_NAMES)}, \"args\": {{...}}}}, got {json.dumps(backbone)[:200]}")
    return sidecar


def write_sidecar(sidecar: dict[str, Any], weights_file: Path) -> Path:
    path = sidecar_path(weights_file)
    path.write_text(json.dumps(sidecar, indent=2, default=str) + "\n", encoding="utf-8")
    return path
