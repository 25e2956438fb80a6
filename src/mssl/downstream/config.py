"""Validated configs of the downstream commands (finetune, evaluate, probe, benchmark)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, ValidationInfo, field_validator

from mssl.config import BackboneConfig, Precision, PresetName, ProbeOptions, Size3, Spacing3, StrictModel, comma_list, lenient, one_line_errors

TaskName = Literal["seg", "cls"]
Names = Annotated[list[str], BeforeValidator(comma_list)]  # "Brainstem,Mandible" or a YAML list
# flat option names (CLI flags and API keywords) that set one key of a nested section
BACKBONE_OPTIONS = {"backbone": "backbone.name", "feature_size": "backbone.feature_size", "window_size": "backbone.window_size", "unet_channels": "backbone.unet_channels"}


class SplitConfig(StrictModel):
    """Which dataset and how it is split when the datalist has no ``split`` key."""

    data: Path = Field(description="MSD-style dataset.json (training entries with image, label, split, ...)")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="used only when the datalist has no split key")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="used only when the datalist has no split key")


class DataConfig(SplitConfig):
    """A dataset plus its preprocessing (preset and spacing default to the weights' sidecar)."""

    preset: PresetName | None = Field(None, description="intensity preset; default: the weights' preset, else from modality")
    spacing: Spacing3 | None = Field(None, description="resample to this spacing (mm), e.g. 1.5 or 1.5,1.5,2; default: keep")


class FinetuneConfig(DataConfig):
    """``mssl finetune``: supervised training of a (pre-trained or scratch) network on k labelled cases."""

    FLAT_OPTIONS: ClassVar[dict[str, str]] = BACKBONE_OPTIONS

    task: TaskName = "seg"
    out: Path = Path("runs/finetune")
    weights: Path | None = Field(None, description="export (encoder.safetensors) or run folder; None = scratch")
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(), description="scratch network (ignored with weights)")
    labels: int | None = Field(None, ge=1, description="k labelled training cases (seeded choice); None = all")
    seed: int = 0
    roi: Size3 | None = Field(None, description="training patch (seg) or whole-volume size (cls); None = median preprocessed shape, capped by max_roi_voxels")
    max_roi_voxels: int = Field(64 * 128 * 128, ge=512, description="memory budget of the automatic roi (voxels per patch)")
    steps: int | Literal["auto"] = Field(1000, description="optimiser steps, or 'auto': up to max_steps, stop when validation Dice plateaus")
    max_steps: int = Field(4000, ge=1, description="horizon of steps='auto' (and of its poly schedule)")
    plateau_window: int = Field(5, ge=2, description="steps='auto': validations without a gain above plateau_delta before stopping")
    plateau_delta: float = Field(0.005, ge=0, description="steps='auto': smallest validation Dice gain that counts as progress")
    batch_size: int = Field(2, ge=1, description="cases per step")
    crops_per_case: int = Field(1, ge=1, description="patches per case and step (seg)")
    foreground_fraction: float = Field(1 / 3, ge=0, le=1, description="share of patches centred on a voxel of a labelled class (seg; nnU-Net: 1/3)")
    batch_dice: bool = Field(True, description="seg: pool each class's Dice over the batch (nnU-Net's 3D choice) instead of per case")
    deep_supervision: int | None = Field(
        None, ge=0, description="seg, unet: extra outputs at 1/2, 1/4, … resolution trained with weights 1/2**i (nnU-Net); None = 2 for the U-Net, 0 otherwise"
    )
    augment: bool = Field(True, description="seg: nnU-Net-style spatial and intensity augmentation (MONAI transforms)")
    elastic: bool = Field(False, description="seg: add elastic deformation to the augmentation (slow on CPU)")
    mirror_axes: Annotated[tuple[int, ...], BeforeValidator(comma_list)] | None = Field(
        None, description="axes mirrored in augmentation and test-time augmentation; None = all but the left-right axis (where the Left/Right organs lie apart) when classes name Left/Right"
    )
    optimizer: Literal["sgd", "adamw"] = Field(
        "adamw", description="adamw (reaches organs faster at CPU budgets, measured) or sgd: Nesterov, momentum 0.99 (nnU-Net; use lr 1e-2)"
    )
    lr: float = Field(3e-3, gt=0, description="peak learning rate (poly decay to 0 over the run)")
    weight_decay: float = Field(3e-5, ge=0)
    freeze_encoder: bool = False
    val_every: int = Field(100, ge=1, description="validate (sliding window) every N steps; best checkpoint kept; last.ckpt refreshed")
    val_cases: int | None = Field(None, ge=1, description="cap on validation cases (CPU budgets)")
    sw_overlap: float = Field(0.25, ge=0, lt=1)
    postprocess: bool = Field(True, description="seg: keep-largest-component per class where it raises validation Dice")
    target: str = Field("sex", description="cls: datalist key to predict (strings → classes, numbers → regression)")
    precision: Precision = "32"
    accelerator: str = "auto"
    devices: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    line_every_steps: int = Field(50, ge=1, description="plain progress line at least every n steps")
    line_every_s: float = Field(60.0, gt=0, description="plain progress line at least every s seconds")
    resume: bool = Field(False, description="continue the run in `out` from its last.ckpt")
    dry_run: bool = Field(False, description="run a few steps outside `out`, print the cost and a projection of the whole run")


class EvaluateConfig(SplitConfig):
    """``mssl evaluate``: metrics of a fine-tuned run on one split, predictions saved as NIfTI.

    Preprocessing is the run's own (``model.json``), so it cannot drift from what the network saw.
    """

    run: Path = Field(description="a finetune output folder (model.json + best.safetensors)")
    split: str = "test"
    out: Path | None = Field(None, description="default: RUN/evaluation/SPLIT")
    classes: Names | None = Field(None, description="report only these classes (names); default all")
    save_predictions: bool = True
    max_cases: int | None = Field(None, ge=1, description="evaluate the first N cases only (quick checks)")
    sw_overlap: float = Field(0.25, ge=0, lt=1)
    tta: bool = Field(True, description="seg: average the predictions of the run's mirror axes (test-time augmentation)")
    nsd_tolerance_mm: float = Field(2.0, gt=0, description="seg: tolerance of the normalised surface Dice (mm)")


class ProbeConfig(DataConfig, ProbeOptions):
    """``mssl probe``: frozen-feature probes of pre-trained vs randomly initialised encoders."""

    FLAT_OPTIONS: ClassVar[dict[str, str]] = BACKBONE_OPTIONS

    weights: Path | None = Field(None, description="export or run folder; None = random encoder only")
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(), description="used when no weights")
    out: Path | None = Field(None, description="write probe.json / probe.md here")
    classes: Names | None = Field(None, description="report only these classes; default all")
    seed: int = 0
    random_baseline: bool = True


class BenchmarkConfig(DataConfig):
    """``mssl benchmark``: the few-label protocol (scratch vs pre-trainings × k × seeds, fixed test split)."""

    FLAT_OPTIONS: ClassVar[dict[str, str]] = {**BACKBONE_OPTIONS, "roi": "finetune.roi", "finetune_steps": "finetune.steps"}
    SECTION_MODELS: ClassVar[dict[str, type[BaseModel]]] = {"finetune": FinetuneConfig, "probe_options": ProbeConfig}

    out: Path = Path("runs/benchmark")
    methods: Names = ["scratch", "s2dc", "gvsl"]
    runs: dict[str, Path] = Field(default_factory=dict, description="method → existing run or export (skips pre-training)")
    labels: Annotated[list[int], BeforeValidator(comma_list)] = Field([2, 5, 10], description="numbers k of labelled training cases")
    seeds: int = Field(3, ge=1)
    backbone: BackboneConfig = Field(default_factory=lambda: BackboneConfig(), description="backbone of pre-training and scratch")
    pretrain_steps: int = Field(1000, ge=1)
    pretrain_overrides: dict[str, object] = Field(default_factory=dict, description="extra mssl.pretrain arguments, every method")
    method_overrides: dict[str, dict[str, object]] = Field(
        default_factory=dict, description="method → extra mssl.pretrain arguments for that method only (e.g. s2dc.field_size)"
    )
    finetune: dict[str, object] = Field(default_factory=dict, description="FinetuneConfig overrides (roi, steps, ...)")
    probe: bool = True
    probe_options: dict[str, object] = Field(default_factory=dict, description="ProbeConfig overrides (train_cases, ...)")
    classes: Names | None = Field(None, description="classes in the table; default all")
    max_test_cases: int | None = Field(None, ge=1, description="score on the first N test cases (CPU budgets)")

    @field_validator("finetune", "probe_options")
    @classmethod
    def _section_keys(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Each key checked and typed by the model it overrides now, not after hours of pre-training."""
        model = cls.SECTION_MODELS[info.field_name]
        try:
            checked = lenient(model).model_validate(value)
        except ValidationError as error:
            raise ValueError(one_line_errors(error)) from None
        return {key: getattr(checked, key) for key in value}
