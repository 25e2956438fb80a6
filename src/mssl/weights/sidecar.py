"""``encoder.json``: everything needed to rebuild, trust and reuse an exported encoder.

:class:`EncoderSidecar` is the one description of an export, written by ``mssl export`` and read by
every reader (loading, inspect, fine-tuning). It names the method, the backbone (a
:class:`~mssl.config.BackboneConfig`: what mssl builds), the same network as a class and its
constructor arguments (for code without mssl), the preprocessing the encoder was trained on, the crop
sizes, the number of steps, the data it saw, the resolved run config and the package versions. The
same JSON is embedded in the safetensors header, so the weights stay self-describing when the sidecar
is lost. Sidecars of the first format (``mssl-encoder/1``, or hand-written ones without a format) are
read through :func:`from_v1`.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mssl.config import BackboneConfig, BackboneName, DataConfig, PretrainConfig, one_line_errors
from mssl.data.preprocess import PresetConfig
from mssl.nnunet_arch import NNUNET_CLASSES
from mssl.runs import PretrainRun, sidecar_of

if TYPE_CHECKING:
    import torch

SIDECAR_FORMAT = "mssl-encoder/2"
V1_FORMAT = "mssl-encoder/1"
METADATA_KEY = "mssl.sidecar"  # key of the embedded sidecar in the safetensors header
SWIN_CLASS = "monai.networks.nets.SwinUNETR"
UNET_CLASS = "mssl.models.backbones.UNetBackbone"
VERSIONED_PACKAGES = ("mssl", "torch", "monai", "lightning", "safetensors", "numpy", "pydantic")
HASH_CHUNK = 1 << 20
BACKBONE_NAMES = get_args(BackboneName)
# v1 described the backbone by its constructor's arguments; these are the config fields they came from
V1_ARGUMENT_FIELDS = {"channels": "unet_channels", "use_checkpoint": "gradient_checkpointing"}
Spacing = tuple[float, float, float]


class SidecarModel(BaseModel):
    """A section of the sidecar: keys a newer mssl may add are ignored, types are checked."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class NetworkSpec(SidecarModel):
    """The backbone as a class and its constructor arguments, for code that builds it without mssl."""

    class_name: str = Field(alias="class")
    args: dict[str, Any]
    arch_kwargs: dict[str, Any] | None = None  # nnU-Net's plans entry for the same network


class DataProvenance(SidecarModel):
    """The cases the encoder was trained on (all None but ``cache`` when the cache was gone at export)."""

    cache: str | None = None
    available: bool = False
    cases: int | None = None
    index_hash: str | None = None
    channels: int | None = None  # image channels of the cached cases
    spacing: Spacing | None = None  # voxel spacing the encoder saw: the preset's target, else the cases' common one
    error: str | None = None  # why an existing cache could not be read


class WeightsFile(SidecarModel):
    file: str
    sha256: str


class EncoderSidecar(SidecarModel):
    """What an exported encoder says about itself (``mssl-encoder/2``)."""

    format: Literal["mssl-encoder/2"] = SIDECAR_FORMAT
    method: str | None = None
    backbone: BackboneConfig | None = None
    network: NetworkSpec | None = None  # computed from ``backbone`` at export; mssl itself never reads it
    preset: PresetConfig | None = None
    roi: dict[str, list[int]] = Field(default_factory=dict)  # the crop each objective trained on, in voxels
    steps: int | None = None
    data: DataProvenance = Field(default_factory=DataProvenance)
    tensors: int | None = None
    decoder_trained: bool | None = None  # False: the decoder tensors are an untrained initialisation (S²DC)
    # tensors no step of the method changed (measured against the run's initial fingerprints, plus an
    # initialised decoder): loaded as "not trained by the method", never as pre-trained; None = not measured
    untrained: list[str] | None = None
    parameters: int | None = None
    stem_adapted_from: int | None = None  # the trained in_channels when the export adapted the stem (nnU-Net)
    source: dict[str, str] | None = None
    created: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] | None = None  # the run's resolved config as written (provenance, not re-validated)
    weights: WeightsFile | None = None  # the file it describes (not in the copy embedded in that file)

    @property
    def spacing(self) -> Spacing | None:
        return self.data.spacing

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2)


def network_spec(config: BackboneConfig) -> NetworkSpec:
    """The class that loads the export and its constructor arguments (the task head is the user's)."""
    if config.name == "swin":
        args = {
            "in_channels": config.in_channels,
            "feature_size": config.feature_size,
            "window_size": config.window_size,
            "use_v2": config.use_v2,
            "spatial_dims": 3,
        }
        return NetworkSpec(class_name=SWIN_CLASS, args=args)
    if config.name in NNUNET_CLASSES:  # rebuilt by BackboneConfig(name, **args); arch_kwargs for nnU-Net's plans
        args = {"in_channels": config.in_channels, "nnunet": config.nnunet.model_dump(mode="json", exclude={"plans"})}
        return NetworkSpec(class_name=NNUNET_CLASSES[config.name], args=args, arch_kwargs=config.nnunet.arch_kwargs(config.name))
    return NetworkSpec(class_name=UNET_CLASS, args={"in_channels": config.in_channels, "channels": list(config.unet_channels)})


def backbone_from_description(raw: Any, source: object) -> BackboneConfig:
    """The backbone of a v1 sidecar (``{"name", "args": constructor arguments}``) or of a run's config.yaml
    (config fields); keys that are neither are ignored. One ValueError line when it is not a backbone."""
    if not (isinstance(raw, dict) and raw.get("name") in BACKBONE_NAMES and isinstance(raw.get("args", {}), dict)):
        raise ValueError(
            f"{source}: 'backbone' must look like {{\"name\": one of {list(BACKBONE_NAMES)}, \"args\": {{...}}}}, got {json.dumps(raw)[:200]}"
        )
    fields = {V1_ARGUMENT_FIELDS.get(k, k): v for k, v in {**raw, **raw.get("args", {})}.items()}
    try:
        return BackboneConfig.model_validate({k: v for k, v in fields.items() if k in BackboneConfig.model_fields})
    except ValidationError as error:
        raise ValueError(f"{source}: backbone: {one_line_errors(error)}") from None


def from_v1(raw: dict[str, Any], source: object) -> dict[str, Any]:
    """The fields of an ``mssl-encoder/1`` sidecar in the current layout: the backbone as a config, the
    spacing and data index hash inside ``data``, a bare preset name completed by the separate spacing."""
    fields = {k: v for k, v in raw.items() if k not in ("format", "spacing", "data_index_hash", "in_channels", "backbone", "preset")}
    spec = raw.get("backbone")
    if spec is not None:
        fields["backbone"] = backbone_from_description(spec, source)
        if "class" in spec:
            fields["network"] = spec
    preset = raw.get("preset")
    if isinstance(preset, str):  # a bare name; ``spacing`` said whether it resampled
        preset = {"name": preset, "spacing": raw.get("spacing")}
    if isinstance(preset, dict):
        preset = {k: v for k, v in preset.items() if k in PresetConfig.model_fields}
    fields["preset"] = preset
    data = raw.get("data")
    fields["data"] = {**(data if isinstance(data, dict) else {}), "spacing": raw.get("spacing"), "index_hash": raw.get("data_index_hash")}
    return fields


def parse_sidecar(raw: Any, source: object) -> EncoderSidecar:
    """A sidecar of any format, validated: a damaged or hostile file is one ValueError line naming ``source``."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a sidecar must be a JSON object, got {type(raw).__name__}")
    written_as = raw.get("format", V1_FORMAT)
    if written_as not in (SIDECAR_FORMAT, V1_FORMAT):
        raise ValueError(f"{source}: unknown sidecar format {written_as!r}; this mssl reads {SIDECAR_FORMAT} and {V1_FORMAT}")
    fields = from_v1(raw, source) if written_as == V1_FORMAT else raw
    try:
        return EncoderSidecar.model_validate(fields)
    except ValidationError as error:
        raise ValueError(f"{source}: {one_line_errors(error)}") from None


def read_sidecar(weights_file: Path) -> EncoderSidecar | None:
    """The sidecar of ``weights_file``: the JSON next to it, else the copy in the safetensors header."""
    from mssl.weights.safe_io import read_metadata

    path = sidecar_of(weights_file)
    if path.is_file():
        try:
            return parse_sidecar(json.loads(path.read_text(encoding="utf-8")), path)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    embedded = read_metadata(weights_file).get(METADATA_KEY)
    if not embedded:
        return None
    try:
        return parse_sidecar(json.loads(embedded), f"{weights_file} (header {METADATA_KEY})")
    except json.JSONDecodeError as error:
        raise ValueError(f"{weights_file}: header {METADATA_KEY} is not valid JSON ({error})") from None


def write_sidecar(sidecar: EncoderSidecar, weights_file: Path) -> Path:
    """``sidecar`` next to ``weights_file``, naming it and its hash."""
    weights_file = Path(weights_file)
    sidecar.weights = WeightsFile(file=weights_file.name, sha256=file_sha256(weights_file))
    path = sidecar_of(weights_file)
    path.write_text(sidecar.to_json() + "\n", encoding="utf-8")
    return path


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


def crop_sizes(config: PretrainConfig) -> dict[str, list[int]]:
    """The crop each objective trained on, in voxels."""
    return {objective: list(getattr(config, objective).roi) for objective in config.objectives}


def data_provenance(data: DataConfig) -> tuple[DataProvenance, PresetConfig | None]:
    """What the cases the run trained on were (count, content hash, spacing) and their preset.

    When the cache is gone (weights exported on another machine) only its path is known, not an error.
    """
    from mssl.data.cache import CacheIndex
    from mssl.data.errors import DataError

    unknown = DataProvenance(cache=str(data.cache) if data.cache else None)
    if data.cache is None or not Path(data.cache).is_dir():
        return unknown, None
    try:
        index = CacheIndex.open(data.cache).select(split=data.split, case_ids=data.case_ids)
        channels = index.channels()
    except (DataError, KeyError) as error:
        return unknown.model_copy(update={"error": str(error)}), None
    spacings = sorted({tuple(case.spacing) for case in index.cases})
    spacing = index.preset.spacing or (spacings[0] if len(spacings) == 1 else None)
    provenance = DataProvenance(
        cache=str(Path(data.cache).resolve()), available=True, cases=len(index), index_hash=index.hash(), channels=channels, spacing=spacing
    )
    return provenance, index.preset


def build_sidecar(
    config: PretrainConfig, steps: int, run: Path, tensors: dict[str, torch.Tensor], untrained: list[str] | None, decoder_trained: bool
) -> EncoderSidecar:
    """The sidecar of the backbone ``tensors`` the run in ``run`` (``config``, ``steps``) trained."""
    data, preset = data_provenance(config.data)
    if data.available and data.channels != config.backbone.in_channels:
        raise ValueError(
            f"{run}: the encoder takes {config.backbone.in_channels}-channel images but its cache {data.cache} now holds "
            f"{data.channels}-channel volumes (prepared again since?); the sidecar would describe other data"
        )
    return EncoderSidecar(
        method=config.method,
        backbone=config.backbone,
        network=network_spec(config.backbone),
        preset=preset,
        roi=crop_sizes(config),
        steps=steps,
        data=data,
        tensors=len(tensors),
        decoder_trained=decoder_trained,
        untrained=untrained,
        # nnU-Net's decoder holds the encoder too: a tensor saved under two names counts once
        parameters=int(sum(t.numel() for t in {(t.data_ptr(), t.shape): t for t in tensors.values()}.values())),
        source={"run": str(Path(run).resolve()), "checkpoint": str(PretrainRun(run).checkpoint.resolve())},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=package_versions(),
        config=config.model_dump(mode="json"),
    )
