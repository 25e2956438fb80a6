"""Validated configuration models shared by the CLI and the Python API.

Every model forbids unknown keys, so a typo in a YAML file or a flag is an error that names the key,
never a silently ignored option.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Size3 = tuple[int, int, int]


class StrictModel(BaseModel):
    """Base of every config: unknown keys and wrong types are errors; values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class BackboneConfig(StrictModel):
    """Which encoder to pre-train and how it is built."""

    name: Literal["swin", "unet"] = "swin"
    in_channels: int = Field(1, ge=1)
    # swin (MONAI SwinUNETR v2)
    feature_size: int = Field(48, ge=12, description="SwinUNETR feature size; must be a multiple of 12")
    window_size: int = Field(7, ge=2, description="attention window; 4 is much cheaper for small crops")
    use_v2: bool = True
    gradient_checkpointing: bool = False
    # unet (GVSL 3D U-Net)
    unet_channels: tuple[int, ...] = (32, 64, 128, 256, 512)

    @field_validator("feature_size")
    @classmethod
    def _swin_feature_size(cls, value: int) -> int:
        if value % 12:
            raise ValueError(f"feature_size must be a multiple of 12 (SwinUNETR heads 3/6/12/24), got {value}")
        return value


class OptimDefaults(StrictModel):
    """A method's optimiser recipe; the training config may override any field."""

    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


class S2DCConfig(StrictModel):
    """S²DC hyper-parameters (defaults follow reference/s2dc.md with the fixes of DESIGN §4)."""

    field_size: Size3 = (384, 384, 96)
    roi: int = Field(96, ge=16, description="side of each grid crop; field_size must be a multiple of it")
    token_stage: int = Field(-1, description="pyramid index of the token layer (-1 = bottleneck)")
    # teacher token view: one in-plane similarity warp of the whole field
    rotation_deg: float = Field(30.0, ge=0)
    scale_range: tuple[float, float] = (0.9, 1.2)
    shift_fraction: float = Field(0.0625, ge=0, description="max in-plane shift as a fraction of the field side")
    # teacher global view: each crop with its own mild affine
    crop_scale_range: tuple[float, float] = (0.95, 1.05)
    crop_rotation_deg: float = Field(10.0, ge=0)
    crop_shift_fraction: float = Field(0.0625, ge=0)
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

    @model_validator(mode="after")
    def _grid(self) -> "S2DCConfig":
        if any(s % self.roi for s in self.field_size):
            raise ValueError(f"field_size {self.field_size} must be a multiple of roi {self.roi} on every axis")
        return self


class GVSLConfig(StrictModel):
    """GVSL hyper-parameters (defaults follow reference/gvsl.md §7 with the fixes of DESIGN §5)."""

    roi: Size3 = (96, 96, 96)
    # appearance damage on A
    shuffle_prob: float = Field(0.8, ge=0, le=1)
    bezier_prob: float = Field(0.9, ge=0, le=1)
    inpaint_prob: float = Field(1.0, ge=0, le=1)
    # shared spatial augmentation of A, damaged A and B
    spatial_aug: bool = True
    aug_rotation_deg: float = Field(20.0, ge=0)
    aug_scale_range: tuple[float, float] = (0.75, 1.25)
    aug_shear_deg: float = Field(10.0, ge=0)
    aug_shift_fraction: float = Field(0.1, ge=0)
    elastic_alpha: tuple[float, float] = (0.0, 512.0)
    elastic_sigma: tuple[float, float] = (10.0, 13.0)
    # Z-matching head bounds (tanh-bounded)
    max_rotation_deg: float = Field(20.0, gt=0)
    max_scale_delta: float = Field(0.25, gt=0, lt=1)
    max_shear_deg: float = Field(10.0, gt=0)
    max_shift_fraction: float = Field(0.25, gt=0)
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
