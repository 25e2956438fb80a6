"""Validated configs of the data layer: the preprocessing preset and ``mssl prepare``'s whole config.

Kept apart from ``mssl.data.preprocess`` (torch, MONAI) so that ``mssl --help`` can build the prepare
command's help from these models without importing them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mssl.config import PresetName, Spacing3, StrictModel

OnError = Literal["skip", "stop"]


class PresetConfig(StrictModel):
    """How ``mssl prepare`` turns a raw volume into a cached one.

    The foreground crop finds the body in channel 0: CT above -500 HU, other presets above 5% of the range.
    """

    name: PresetName = Field("ct", description="intensity preset; ct: HU window → [0,1], mri: percentile clip + z-score, none: intensities as read")
    spacing: Spacing3 | None = Field(None, description="target voxel size in mm (x, y, z); null keeps each volume's own spacing")
    a_min: float = Field(-1000.0, description="CT: HU mapped to 0")
    a_max: float = Field(1000.0, description="CT: HU mapped to 1")
    lower: float = Field(0.5, ge=0, le=100, description="MRI: lower clipping percentile")
    upper: float = Field(99.5, ge=0, le=100, description="MRI: upper clipping percentile")
    foreground_crop: bool = Field(True, description="crop each volume to the bounding box of the body")
    channel_axis: int | None = Field(
        None, ge=-4, le=3, description="axis holding channels in 4D images, e.g. -1; null: images are 3D, or one file per channel"
    )

    @model_validator(mode="after")
    def _ranges(self) -> "PresetConfig":
        if self.a_min >= self.a_max:
            raise ValueError(f"a_min ({self.a_min}) must be below a_max ({self.a_max})")
        if self.lower >= self.upper:
            raise ValueError(f"lower percentile ({self.lower}) must be below upper ({self.upper})")
        return self


class PrepareConfig(StrictModel):
    """``mssl prepare``: which source to preprocess into which cache, with which preset."""

    # the command's flat options (and ``prepare(**options)`` keywords) → the preset key each one sets;
    # a whole mapping (``preset: {name: mri, spacing: 2}``) still sets the section
    FLAT_OPTIONS: ClassVar[dict[str, str]] = {"preset": "preset.name", **{key: f"preset.{key}" for key in PresetConfig.model_fields if key != "name"}}

    source: str = Field(
        description="a folder (searched recursively for images and DICOM series), a glob, an MSD datalist JSON "
        "(or a folder holding dataset.json), or an nnU-Net raw dataset folder"
    )
    out: Path = Field(description="cache folder to write (index.json + .npy arrays); rerunning on it skips unchanged cases")
    preset: PresetConfig = Field(default_factory=PresetConfig, description="intensity and spacing preprocessing")
    workers: int = Field(1, ge=1, description="parallel worker processes")
    on_error: OnError = Field("skip", description="a bad file: skip reports it and goes on, stop stops the run there")
    base_dir: Path | None = Field(None, description="folder that datalist paths are relative to; null: the JSON's folder")

    @field_validator("source", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        """A ``Path`` source is its text: the source may be a glob, which no ``Path`` type keeps as written."""
        return os.fspath(value) if isinstance(value, os.PathLike) else value
