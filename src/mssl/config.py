"""Validated configuration models shared by the CLI and the Python API.

Every model forbids unknown keys, so a typo in a YAML file or a flag is an error that names the key,
never a silently ignored option.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Sequence, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from mssl.nnunet_arch import MIN_BOTTLENECK_VOXELS, NNUNET_CLASSES, NnUNetArchConfig, fill_arch


def three_values(value: Any) -> Any:
    """The one reader of a per-axis size or spacing: ``96``, ``"96"``, ``"128,128,64"``, ``"128x128x64"``,
    ``"1.5 1.5 2"`` or ``[128, 128, 64]`` → three values (one value means the same on every axis).
    Anything else is left for pydantic to reject with the key's name."""
    if isinstance(value, str):
        value = value.replace("x", ",").replace(",", " ").split()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = list(value) * 3
    if isinstance(value, (list, tuple)) and len(value) != 3:
        raise ValueError("expected one number or three comma-separated ones (x,y,z)")
    return value


def comma_list(value: Any) -> Any:
    """``"8,16,32"`` → ``["8", "16", "32"]`` (pydantic then types each item); other values are left as they are."""
    return [item.strip() for item in value.split(",")] if isinstance(value, str) else value


# A size in voxels or a spacing in mm per axis, x, y, z: one type for every config field and CLI option.
Size3 = Annotated[tuple[PositiveInt, PositiveInt, PositiveInt], BeforeValidator(three_values)]
Spacing3 = Annotated[tuple[PositiveFloat, PositiveFloat, PositiveFloat], BeforeValidator(three_values)]
Widths = Annotated[tuple[PositiveInt, ...], BeforeValidator(comma_list)]
WARMUP_SHARE = 0.1  # longest warm-up, as a fraction of the run
GVSL_PAPER_BATCH = 2  # pairs per step in the GVSL paper

# The choices a user can name, defined once; the CLI offers exactly these (Typer reads Literal types).
MethodName = Literal["s2dc", "gvsl", "both"]
BackboneName = Literal["swin", "unet", "plainconv", "resenc"]  # the last two: nnU-Net's networks
OptimizerName = Literal["adamw", "adam"]
StrategyName = Literal["auto", "ddp"]
Precision = Literal["32", "bf16-mixed", "16-mixed"]
PresetName = Literal["ct", "mri", "none"]
FeatureSource = Literal["encoder", "decoder"]  # what a frozen probe reads: the encoder pyramid or the last decoder map


class StrictModel(BaseModel):
    """Base of every config: unknown keys and wrong types are errors; values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class BackboneConfig(StrictModel):
    """Which encoder to pre-train and how it is built."""

    name: BackboneName = "swin"
    in_channels: int = Field(1, ge=1)
    # swin (MONAI SwinUNETR v2)
    feature_size: int = Field(48, ge=12, description="SwinUNETR feature size; must be a multiple of 12")
    window_size: int = Field(7, ge=2, description="attention window; 4 is much cheaper for small crops")
    use_v2: bool = True
    gradient_checkpointing: bool = Field(
        False, description="recompute block activations in the backward pass (swin, unet): less memory, slower steps"
    )
    # unet (GVSL 3D U-Net)
    unet_channels: Widths = (32, 64, 128, 256, 512)
    # plainconv / resenc (nnU-Net's PlainConvUNet / ResidualEncoderUNet): preset, plans file or explicit stages
    nnunet: NnUNetArchConfig = NnUNetArchConfig()

    @model_validator(mode="before")
    @classmethod
    def _nnunet_architecture(cls, data: Any) -> Any:
        """Resolve an nnU-Net network's stages now, so the saved run config is complete without the plans file."""
        if not isinstance(data, Mapping) or data.get("name") not in NNUNET_CLASSES:
            return data
        section = data.get("nnunet") or {}
        if isinstance(section, BaseModel):
            section = section.model_dump(exclude_none=True)
        return {**data, "nnunet": fill_arch(data["name"], section)}

    @model_validator(mode="after")
    def _nnunet_stages(self) -> "BackboneConfig":
        if self.name in NNUNET_CLASSES:
            self.nnunet.check(self.name)
            if self.gradient_checkpointing:
                raise ValueError(f"gradient_checkpointing is available for the swin and unet backbones, not {self.name}")
        return self

    @field_validator("feature_size")
    @classmethod
    def _swin_feature_size(cls, value: int) -> int:
        if value % 12:
            raise ValueError(f"feature_size must be a multiple of 12 (SwinUNETR heads 3/6/12/24), got {value}")
        return value


SWIN_STRIDE = 32  # SwinUNETR: patch embedding (2) and four patch merges (2⁴)


def unet_stride(channels: Sequence[int]) -> int:
    """One 2× max-pool per width after the first."""
    return 2 ** (len(channels) - 1)


def backbone_stride(config: BackboneConfig) -> int:
    """Every spatial size fed to the backbone a config names must be a multiple of this (no need to build it)."""
    if config.name in NNUNET_CLASSES:
        return config.nnunet.total_stride()
    return SWIN_STRIDE if config.name == "swin" else unet_stride(config.unet_channels)


def size_problem(size: Sequence[int], stride: int, network: str, normalised_bottleneck: bool) -> str | None:
    """Why a ``network`` of ``stride`` cannot take inputs of ``size`` (None when it can): the one rule behind
    the config-time checks (:func:`input_size_problem`) and the backbones' own (``Backbone.check_size``).

    Every side must be a multiple of the stride; a network that instance-normalises its bottleneck
    (SwinUNETR's decoder, nnU-Net's encoder) needs more than one voxel there (one side ≥ 2 × stride)."""
    size = tuple(int(side) for side in size)
    if any(side % stride for side in size):
        fitting = tuple(max(stride, side // stride * stride) for side in size)
        return f"{size} is not a multiple of the {network} backbone's stride {stride} on every axis (e.g. {fitting})"
    if normalised_bottleneck and math.prod(side // stride for side in size) < MIN_BOTTLENECK_VOXELS:
        return (
            f"{size} leaves the {network} backbone a single bottleneck voxel, which it cannot normalise; "
            f"make at least one side {2 * stride} or more"
        )
    return None


def input_size_problem(config: BackboneConfig, size: Sequence[int], decode: bool) -> str | None:
    """:func:`size_problem` for the backbone a config names, checked before anything is built or written.
    ``decode``: the decoder runs (SwinUNETR's normalises the bottleneck; nnU-Net's encoder always does)."""
    normalised = config.name in NNUNET_CLASSES or (decode and config.name == "swin")
    return size_problem(size, backbone_stride(config), config.name, normalised)


class OptimDefaults(StrictModel):
    """A method's optimiser recipe; the training config may override any field."""

    optimizer: OptimizerName = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


class S2DCConfig(StrictModel):
    """S²DC hyper-parameters (defaults follow reference/s2dc.md with the fixes of DESIGN §4)."""

    field_size: Size3 = (384, 384, 96)
    roi: Size3 = Field((96, 96, 96), description="grid crop, a cube (one side or three equal ones); field_size must be a multiple of it")
    token_stage: int = Field(-1, description="pyramid index of the token layer (-1 = bottleneck)")
    # teacher token view: one in-plane similarity warp of the whole field
    rotation_deg: float = Field(30.0, ge=0)
    scale_range: tuple[float, float] = (0.9, 1.2)
    shift_fraction: float = Field(0.0625, ge=0, description="max in-plane shift as a fraction of the field side")
    # teacher global view: each crop with its own mild affine
    crop_scale_range: tuple[float, float] = (0.95, 1.05)
    crop_rotation_deg: float = Field(10.0, ge=0)
    crop_shift_fraction: float = Field(0.0625, ge=0, description="max shift of each global-view crop as a fraction of roi")
    intensity_shift: float = Field(0.1, ge=0)
    intensity_shift_prob: float = Field(0.1, ge=0, le=1)
    # heads
    head_hidden: int = Field(2048, ge=8)
    head_out: int = Field(512, ge=8)
    # losses
    tau_ot: float = Field(0.1, gt=0)
    sinkhorn_iters: int = Field(50, ge=1)
    dustbin_init: float = 1.0
    tau_global: float = Field(0.2, gt=0)
    queue_size: int = Field(90, ge=0)
    w_p2p: float = Field(0.5, ge=0)
    w_p2s: float = Field(0.5, ge=0)
    w_g: float = Field(0.5, ge=0)
    # teacher
    ema_start: float = Field(0.996, ge=0, le=1)
    ema_end: float = Field(1.0, ge=0, le=1)
    optim: OptimDefaults = OptimDefaults(optimizer="adamw", lr=3e-4, weight_decay=0.1, warmup_steps=500, schedule="cosine")

    @model_validator(mode="before")
    @classmethod
    def _field_follows_roi(cls, data: Any) -> Any:
        """A roi without a field keeps the paper's grid of 4 × 4 × 1 crops, not a 384 × 384 × 96 field of tiny crops."""
        if isinstance(data, Mapping) and data.get("roi") is not None and data.get("field_size") is None:
            try:
                roi = TypeAdapter(Size3).validate_python(data["roi"])
            except ValidationError:
                return data  # the field's own validation names the problem
            default_roi, default_field = cls.model_fields["roi"].default, cls.model_fields["field_size"].default
            return {**data, "field_size": tuple(f // d * r for f, d, r in zip(default_field, default_roi, roi))}
        return data

    @model_validator(mode="after")
    def _grid(self) -> "S2DCConfig":
        if len(set(self.roi)) > 1:
            raise ValueError(f"roi must be a cube for S²DC (its token grids tile cubic crops), got {self.roi}")
        if any(f % r for f, r in zip(self.field_size, self.roi)):
            raise ValueError(f"field_size {self.field_size} must be a multiple of roi {self.roi} on every axis")
        return self

    @property
    def crop_side(self) -> int:
        """The side of the cubic grid crops."""
        return self.roi[0]


class GVSLConfig(StrictModel):
    """GVSL hyper-parameters (defaults follow reference/gvsl.md §7 with the fixes of DESIGN §5)."""

    roi: Size3 = (96, 96, 96)
    pair_sampling: Literal["corresponding", "independent"] = Field(
        "corresponding", description="crop A and B at the same relative position of their volumes, or each anywhere"
    )
    pair_jitter: int = Field(4, ge=0, description="corresponding sampling: each crop then moves up to ± this many voxels per axis")
    # appearance damage on A
    shuffle_prob: float = Field(0.8, ge=0, le=1)
    bezier_prob: float = Field(0.9, ge=0, le=1)
    inpaint_prob: float = Field(1.0, ge=0, le=1)
    # shared spatial augmentation of A, damaged A and B
    spatial_aug: bool = True
    aug_rotation_deg: float = Field(20.0, ge=0)
    aug_scale_range: tuple[float, float] = (0.75, 1.25)
    aug_shear_deg: float = Field(10.0, ge=0)
    aug_shift_fraction: float = Field(
        0.1, ge=0, description="max shift as a fraction of the half extent (size - 1) / 2, i.e. ±5 % of the crop as in the official code"
    )
    elastic_alpha: tuple[float, float] = (0.0, 512.0)
    elastic_sigma: tuple[float, float] = (10.0, 13.0)
    # Z-matching head bounds (tanh-bounded)
    max_rotation_deg: float = Field(20.0, gt=0)
    max_scale_delta: float = Field(0.25, gt=0, lt=1)
    max_shear_deg: float = Field(10.0, gt=0)
    max_shift_fraction: float = Field(0.25, gt=0, description="bound of the predicted shift, as a fraction of the half extent")
    # losses
    ncc_window: int = Field(9, ge=3)
    ncc_eps: float = Field(1e-5, gt=0)
    w_ncc: float = Field(1.0, ge=0)
    w_restore: float = Field(1.0, ge=0)
    w_smooth: float = Field(1.0, ge=0)
    optim: OptimDefaults = OptimDefaults(optimizer="adam", lr=1e-4, weight_decay=0.0, warmup_steps=0, schedule="constant")

    @field_validator("ncc_window")
    @classmethod
    def _odd_window(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"ncc_window must be odd, got {value}")
        return value


M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------------------------------
# Pre-training run (`mssl pretrain` ≡ `mssl.pretrain(...)`)
# --------------------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config that cannot be built; the message names each bad key and what was expected."""


class DataConfig(StrictModel):
    """Where the crops come from: a cache folder written by ``mssl prepare``."""

    cache: Path | None = Field(None, description="cache folder written by `mssl prepare` (required to train)")
    split: str | None = Field(None, description="train on the cases of this split only (e.g. 'train'; default: all)")
    case_ids: list[str] | None = Field(None, description="train on these cases only (default: every case in the cache)")
    foreground_bias: float = Field(0.0, ge=0, le=1, description="probability that a crop is centred on foreground")
    batch_size: int = Field(1, ge=1, description="samples per device per micro-batch")
    workers: int = Field(2, ge=0, description="DataLoader worker processes reading the cache")


class OptimConfig(StrictModel):
    """Optimiser and schedule; fields left unset take the method's recipe (``S2DCConfig.optim``, ``GVSLConfig.optim``)."""

    optimizer: OptimizerName | None = None
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    warmup_steps: int | None = Field(None, ge=0)
    schedule: Literal["cosine", "constant"] | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of lr")

    def resolve(self, defaults: OptimDefaults) -> "OptimConfig":
        """A copy with every unset field taken from ``defaults``."""
        unset = {name: getattr(defaults, name) for name in OptimDefaults.model_fields if getattr(self, name) is None}
        return self.model_copy(update=unset)


class TrainerConfig(StrictModel):
    """Loop, hardware and checkpointing (Lightning ``Trainer`` options)."""

    max_steps: int = Field(100_000, ge=1, description="optimiser steps")
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = Field(1, description="devices per node (int ≥ 1 or 'auto')")
    num_nodes: int = Field(1, ge=1)
    # no ddp_spawn: its workers' state (final losses, skipped steps) never returns to the launching process
    strategy: StrategyName = Field("auto", description="ddp: one process per device (torchrun/SLURM for several nodes)")
    precision: Precision = Field("32", description="bf16-mixed keeps NCC, Sinkhorn, token/InfoNCE logits and warps in float32")
    compile: bool = Field(False, description="torch.compile every backbone of the method (compiled at the first step)")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value (off when unset)")
    accumulate: int = Field(1, ge=1, description="micro-batches per optimiser step")
    checkpoint_every: int = Field(1000, ge=1, description="steps between periodic checkpoints")
    keep_checkpoints: int = Field(2, ge=-1, description="periodic checkpoints kept besides last.ckpt: the K newest (-1 = all)")
    max_nonfinite: int = Field(10, ge=1, description="abort after this many non-finite losses in a row")

    @field_validator("devices")
    @classmethod
    def _positive_devices(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"devices must be ≥ 1 or 'auto', got {value}")
        return value


class ProbeOptions(StrictModel):
    """Sizes of the frozen-feature probes, shared by ``mssl probe`` and the probes during ``mssl pretrain``."""

    train_cases: int = Field(4, ge=1, description="labelled training cases the probes see")
    test_cases: int = Field(4, ge=1, description="test cases the probes are scored on")
    voxels_per_class: int = Field(2000, ge=10, description="sampled voxels per class and case for the linear probe")
    patch: int = Field(16, ge=4, description="side of the cubes the patch classifier labels")
    knn_k: int = Field(5, ge=1)
    fit_steps: int = Field(300, ge=1, description="Adam steps fitting the linear voxel probe")
    size: Size3 | None = Field(None, description="pad/crop volumes to this size; default: next multiple of the stride")
    features: FeatureSource = Field(
        "encoder", description="encoder: pyramid maps; decoder: the last decoder map (GVSL's 1×1×1 linear protocol), where the decoder was trained"
    )


class PretrainProbeConfig(ProbeOptions):
    """Probes of the encoder being trained, at step 0, every ``every`` steps and at the last step (off without ``data``)."""

    data: Path | None = Field(None, description="labelled dataset.json (its train split fits the probes, its test split scores them)")
    every: int = Field(500, ge=1, description="optimiser steps between probes")


class LoggingConfig(StrictModel):
    """What is written to RUN/logs and shown on screen."""

    every_n_steps: int = Field(10, ge=1, description="log scalars every n optimiser steps")
    progress_bar: bool = Field(True, description="a progress bar on a terminal; otherwise (a log file, or off) plain progress lines")
    line_every_steps: int = Field(100, ge=1, description="plain progress line at least every n steps")
    line_every_s: float = Field(60.0, gt=0, description="plain progress line at least every s seconds")


def objectives(method: MethodName) -> tuple[str, ...]:
    """The method names whose losses ``method`` trains (both for ``'both'``)."""
    return ("s2dc", "gvsl") if method == "both" else (method,)


class PretrainConfig(StrictModel):
    """Everything a pre-training run needs; saved resolved as RUN/config.yaml."""

    # The flat options of the CLI and of ``pretrain(**overrides)`` → the config key each one sets
    # (``roi`` is not here: it sets s2dc.roi and/or gvsl.roi, for the objectives being trained).
    FLAT_OPTIONS: ClassVar[dict[str, str]] = {
        "backbone": "backbone.name",
        "data": "data.cache",
        "split": "data.split",
        "batch_size": "data.batch_size",
        "workers": "data.workers",
        "steps": "trainer.max_steps",
        "accelerator": "trainer.accelerator",
        "devices": "trainer.devices",
        "num_nodes": "trainer.num_nodes",
        "strategy": "trainer.strategy",
        "precision": "trainer.precision",
        "compile": "trainer.compile",
        "checkpoint_activations": "backbone.gradient_checkpointing",
        "grad_clip": "trainer.grad_clip",
        "accumulate": "trainer.accumulate",
        "checkpoint_every": "trainer.checkpoint_every",
        "keep_checkpoints": "trainer.keep_checkpoints",
        "max_nonfinite": "trainer.max_nonfinite",
        "optimizer": "optim.optimizer",
        "lr": "optim.lr",
        "weight_decay": "optim.weight_decay",
        "warmup_steps": "optim.warmup_steps",
        "log_every": "logging.every_n_steps",
        "progress_bar": "logging.progress_bar",
        "probe": "probe.data",
        "probe_every": "probe.every",
    }

    method: MethodName = "s2dc"
    backbone: BackboneConfig = BackboneConfig()
    s2dc: S2DCConfig = S2DCConfig()
    gvsl: GVSLConfig = GVSLConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()
    logging: LoggingConfig = LoggingConfig()
    probe: PretrainProbeConfig = PretrainProbeConfig()
    out: Path = Field(Path("runs/pretrain"), description="run folder")
    seed: int = Field(0, ge=0)
    resume: bool = Field(False, description="continue the run in `out` from its last checkpoint")

    @property
    def objectives(self) -> tuple[str, ...]:
        """The method names whose losses are trained (both for ``method='both'``)."""
        return objectives(self.method)

    @field_validator("s2dc", "gvsl")
    @classmethod
    def _crop_fits_backbone(cls, section: S2DCConfig | GVSLConfig, info: ValidationInfo) -> S2DCConfig | GVSLConfig:
        """A crop the backbone cannot take (stride, a lone normalised bottleneck voxel) is refused with the config,
        not at the first step. S²DC reads encoder maps only; GVSL runs the decoder."""
        backbone, method = info.data.get("backbone"), info.data.get("method")
        if backbone is not None and method is not None and info.field_name in objectives(method):
            problem = input_size_problem(backbone, section.roi, decode=info.field_name == "gvsl")
            if problem:
                raise ValueError(f"roi {problem}; set --roi")
        return section

    def method_optim(self) -> OptimDefaults:
        """The recipe of the method (S²DC's for ``both``: AdamW with decay and warm-up suits the shared Swin)."""
        return self.gvsl.optim if self.method == "gvsl" else self.s2dc.optim

    @model_validator(mode="before")
    @classmethod
    def _paper_defaults_of_gvsl(cls, data: Any) -> Any:
        """GVSL alone defaults to its paper's network and batch (U-Net, 2 pairs) instead of S²DC's Swin and 1."""
        if not isinstance(data, Mapping) or data.get("method") != "gvsl":
            return data
        data = dict(data)
        backbone = data.get("backbone")
        if backbone is None or (isinstance(backbone, Mapping) and "name" not in backbone):
            data["backbone"] = {**(backbone or {}), "name": "unet"}
        section = data.get("data")
        if section is None or (isinstance(section, Mapping) and "batch_size" not in section):
            data["data"] = {**(section or {}), "batch_size": GVSL_PAPER_BATCH}
        return data

    def resolved(self) -> "PretrainConfig":
        """A copy with the optimiser's unset fields filled from the method's recipe and the cache as an
        absolute path (what RUN/config.yaml stores: the run reads its cache from any working directory).

        A warm-up longer than WARMUP_SHARE of the run is shortened to it, with a warning: the recipes'
        500 warm-up steps would leave a 30-step run at 6 % of its learning rate."""
        optim = self.optim.resolve(self.method_optim())
        longest = int(WARMUP_SHARE * self.trainer.max_steps)
        if optim.warmup_steps > longest:
            warnings.warn(
                f"warm-up of {optim.warmup_steps} steps shortened to {longest} ({WARMUP_SHARE:.0%} of the {self.trainer.max_steps}-step run)",
                UserWarning,
                stacklevel=2,
            )
            optim = optim.model_copy(update={"warmup_steps": longest})
        data = self.data if self.data.cache is None else self.data.model_copy(update={"cache": self.data.cache.resolve()})
        return self.model_copy(update={"optim": optim, "data": data})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "PretrainConfig":
        """Load a YAML file, apply dotted ``overrides`` (``{"s2dc.tau_ot": 0.05}``), validate."""
        return build_config(cls, path, **(overrides or {}))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level, got {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key="a.b"``, creating sections on the way."""
    *sections, leaf = key.split(".")
    node = data
    for i, section in enumerate(sections):
        child = node.setdefault(section, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(sections[: i + 1])!r} is a value, not a section; cannot set {key!r}")
        node = child
    node[leaf] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"s2dc.tau_ot=0.05"`` → ``("s2dc.tau_ot", 0.05)``; the value is read as YAML (numbers, lists, booleans)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error})") from error
    return key.strip(), value


def merge_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted key of ``overrides`` set; a mapping value merges into that section."""
    merged = _deep_copy(data)
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            merged = merge_overrides(merged, {f"{key}.{k}": v for k, v in value.items()})
        else:
            set_dotted(merged, key, value)
    return merged


def build_config(model: type[M], config: BaseModel | Mapping[str, Any] | str | Path | None = None, **options: Any) -> M:
    """Every command's config, the same for its CLI and its Python function.

    ``config``: a model, a mapping or a YAML file (None: the defaults). ``options``, applied on top, are the
    set values (None = not set) by field name, dotted key (``**{"s2dc.tau_ot": 0.05}``) or the model's flat
    names (``FLAT_OPTIONS``: ``feature_size`` → ``backbone.feature_size``); a mapping merges into its section.
    Errors become one :class:`ConfigError` naming every bad key.
    """
    if isinstance(config, BaseModel):
        values: dict[str, Any] = config.model_dump()
    elif isinstance(config, (str, Path)):
        values = load_yaml(config)
    else:
        values = dict(config or {})
    flat: Mapping[str, str] = getattr(model, "FLAT_OPTIONS", {})
    dotted = {
        key if isinstance(value, (Mapping, BaseModel)) else flat.get(key, key): value.model_dump() if isinstance(value, BaseModel) else value
        for key, value in options.items()
        if value is not None
    }
    try:
        return model.model_validate(merge_overrides(values, dotted))
    except ValidationError as error:
        raise ConfigError(format_validation_error(error)) from None


def one_line_errors(error: ValidationError) -> str:
    """Every problem of a validation error on one line: ``key: message; key: message``."""
    return "; ".join(f"{'.'.join(map(str, item['loc'])) or '(top level)'}: {_message(item)}" for item in error.errors())


def _message(item: Mapping[str, Any]) -> str:
    """Pydantic's message without the "Value error, " it puts before our validators' own words."""
    return str(item["msg"]).removeprefix("Value error, ")


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: ``key: what was expected (got value)``; a single problem on the line of the heading."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = _message(item)
        if item["type"] == "extra_forbidden":
            message = "unknown option (check the spelling; see the command's --help or --print-config)"
        got = f" (got {item['input']!r})" if item["type"] != "extra_forbidden" and not isinstance(item["input"], dict) else ""
        lines.append(f"config key {key!r}: {message}{got}")
    if len(lines) == 1:  # the usual case stays one line
        return f"invalid configuration: {lines[0]}"
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def config_field(model: type[BaseModel], key: str) -> FieldInfo:
    """The field a flat option or a dotted key of ``model`` names (``steps`` → ``trainer.max_steps``).

    A section that is a mapping of another config's overrides (``BenchmarkConfig.finetune``) is read
    through the model its ``SECTION_MODELS`` names."""
    key = getattr(model, "FLAT_OPTIONS", {}).get(key, key)
    *sections, leaf = key.split(".")
    for section in sections:
        model = getattr(model, "SECTION_MODELS", {}).get(section) or model.model_fields[section].annotation
    return model.model_fields[leaf]


def default_text(field: FieldInfo) -> str | None:
    """A field's default as a user types it on the command line (None when the default is None or empty)."""
    if field.is_required():
        return None
    default = field.get_default(call_default_factory=True)
    if default is None or default == {}:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, (tuple, list)):
        return ",".join(str(item) for item in default)
    return str(default)


def option_help(model: type[BaseModel], key: str, text: str | None = None, unset: str | None = None) -> str:
    """Help of the CLI option that sets ``key`` of ``model``, ending with the model's default, so the two never drift.

    ``text``: what the option does (default: the field's description); ``unset``: what happens when the
    default is None (e.g. "the median preprocessed shape")."""
    field = config_field(model, key)
    if text is None:
        description = field.description or ""
        text = f"{description[:1].upper()}{description[1:]}."
    default = default_text(field) or unset
    return f"{text} (default: {default})" if default else text


@functools.cache  # one class per model, however often a section is validated
def lenient(model: type[M]) -> type[M]:
    """``model`` with its required keys optional (None): a config that can be shown before it is complete."""
    required = {name: (field.annotation | None, None) for name, field in model.model_fields.items() if field.is_required()}
    return create_model(model.__name__, __base__=model, **required) if required else model  # type: ignore[call-overload]


def config_yaml(model: type[BaseModel], values: Mapping[str, Any] | None = None, indent: int = 0) -> str:
    """Every key of ``model`` as YAML with its description as a comment (``--print-config``).

    ``values``: a ``model_dump(mode="json")`` of a resolved config (default: the model's defaults).
    Nested config models are expanded; a required key without a value shows ``null  # required``."""
    lines = []
    pad = " " * indent
    for name, field in model.model_fields.items():
        comment = f"  # {field.description}" if field.description else ""
        if values is not None:
            value = values.get(name)
        else:
            value = None if field.is_required() else field.get_default(call_default_factory=True)
        if field.is_required() and value is None:
            lines.append(f"{pad}{name}: null  # required{'; ' + field.description if field.description else ''}")
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) and isinstance(value, Mapping):
            lines.append(f"{pad}{name}:{comment}")
            lines.append(config_yaml(field.annotation, value, indent + 2))
            continue
        text = yaml.safe_dump(TypeAdapter(Any).dump_python(value, mode="json"), default_flow_style=True, width=10**6)
        lines.append(f"{pad}{name}: {text.strip().removesuffix('...').strip()}{comment}")
    return "\n".join(lines)
