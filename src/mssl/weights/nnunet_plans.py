"""``mssl nnunet-plans``: plans for a target nnU-Net dataset whose network is the pre-trained one.

nnU-Net can only load pre-trained weights into the network its plans describe. Starting from the
target's own plans (written by ``nnUNetv2_plan_and_preprocess``), this copies the pre-trained
architecture into one configuration, keeps the target's spacing (unless told otherwise), fits the
patch size to the network's strides, and checks what no plans can change: the number of input
channels and the intensity normalisation. The result is ``nnUNet_preprocessed/DatasetXXX/PLANS.json``.
When the spacing and normalisation are the target's own, the preprocessed data of the source plans
are reused (same ``data_identifier``), so no second preprocessing is needed.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mssl.nnunet_arch import MIN_BOTTLENECK_VOXELS
from mssl.runs import ExportFolder, PretrainRun

PLANS_FORMAT = "mssl-nnunet-plans/1"
CONFIGURATION = "3d_fullres"
PREPROCESSED_ENV = "nnUNet_preprocessed"


class PlansError(ValueError):
    """Pre-trained weights and a target dataset that no plans can reconcile; the message says why and what to do."""


@dataclass
class AdaptedPlans:
    plans: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what was changed and why, for the user
    needs_preprocessing: bool = False


def find_pretrained_plans(weights: str | Path) -> Path:
    """``nnunet_plans.json`` behind a run folder, an export folder or the exported ``.pth``."""
    path = Path(weights)
    folders = [ExportFolder(path.parent)] if path.is_file() else [ExportFolder(path), PretrainRun(path).export]
    candidates = [folder.nnunet_plans for folder in folders]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(
            f"{weights}: no {candidates[0].name} (looked in {', '.join(str(c.parent) for c in candidates)}); "
            f"export the run first: mssl export RUN --format nnunet"
        )
    return found


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlansError(f"{path}: not found ({what})") from None
    except json.JSONDecodeError as error:
        raise PlansError(f"{path}: not valid JSON ({error})") from None


def dataset_folder(dataset: str, preprocessed: str | Path | None = None) -> Path:
    """``nnUNet_preprocessed/DatasetXXX_Name`` from a name, ``DatasetXXX`` or a bare id."""
    root = preprocessed or os.environ.get(PREPROCESSED_ENV)
    if not root:
        raise PlansError(f"set {PREPROCESSED_ENV} (or pass --preprocessed) to the folder nnU-Net preprocesses into")
    root = Path(root)
    if (root / dataset).is_dir():
        return root / dataset
    digits = dataset.removeprefix("Dataset").split("_")[0]
    prefix = f"Dataset{int(digits):03d}_" if digits.isdigit() else None
    matches = sorted(p for p in root.glob(f"{prefix}*") if p.is_dir()) if prefix else []
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(p.name for p in matches)
        raise PlansError(f"{root}: no single dataset folder for {dataset!r} (found {found}); run nnUNetv2_plan_and_preprocess first")
    return matches[0]


def fit_patch(patch: Sequence[int], stride: int) -> list[int]:
    """Each axis rounded down to a multiple of ``stride`` (at least one stride)."""
    return [max(stride, int(p) // stride * stride) for p in patch]


def check_patch(patch: Sequence[int], stride: int) -> None:
    bad = [int(p) for p in patch if int(p) % stride]
    if bad:
        raise PlansError(f"patch size {list(patch)} is not divisible by the network's total stride {stride} (axes {bad}); try {fit_patch(patch, stride)}")
    if math.prod(int(p) // stride for p in patch) < MIN_BOTTLENECK_VOXELS:
        raise PlansError(f"patch size {list(patch)} leaves a 1-voxel bottleneck at stride {stride}; use at least {2 * stride} on one axis")


def check_channels(pretrained: dict[str, Any], dataset_json: dict[str, Any], dataset: str) -> None:
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    expected = pretrained["in_channels"]
    if len(channels) != expected:
        names = ", ".join(str(v) for v in channels.values())
        raise PlansError(
            f"{dataset} has {len(channels)} input channel(s) ({names}) but the weights have {expected}; nnU-Net's "
            f"load_pretrained_weights needs identical shapes, which no plans can change. Re-export with the stem "
            f"adapted: mssl export RUN --format nnunet --in-channels {len(channels)} (the first convolution's kernel "
            f"is repeated cyclically over the new channels and scaled by {expected}/{len(channels)}, so its response is "
            f"unchanged when the channels carry copies of the pre-training image; nnU-Net then fine-tunes it)"
        )


def check_normalization(pretrained: dict[str, Any], schemes: Sequence[str], dataset: str) -> str | None:
    """An error when the target normalises differently from the pre-training preset; a note when unknown."""
    expected = pretrained.get("normalization")
    if expected is None:
        return "the pre-training intensity preset is unknown (its cache was not found at export time); normalisation not checked"
    wrong = sorted({s for s in schemes if s != expected})
    if wrong:
        raise PlansError(
            f"{dataset} normalises with {', '.join(wrong)} but the encoder was pre-trained with the {pretrained['preset']!r} "
            f"preset, whose nnU-Net counterpart is {expected}; name the channels accordingly in dataset.json "
            f"(e.g. 'CT' for CTNormalization) and plan again, or pre-train with the matching preset"
        )
    return None


def plans_spacing(xyz: Sequence[float], transpose_forward: Sequence[int]) -> list[float]:
    """mssl's (x, y, z) spacing in a plans file's axis order: nnU-Net's arrays are (z, y, x), then transposed."""
    zyx = list(reversed([float(s) for s in xyz]))
    return [zyx[axis] for axis in transpose_forward]


def check_spacing(pretrained: dict[str, Any], spacing: Sequence[float], transpose_forward: Sequence[int]) -> str | None:
    """A note when the plans resample to another spacing than the encoder was pre-trained at."""
    xyz = pretrained.get("spacing")
    if not xyz:
        return None
    expected = plans_spacing(xyz, transpose_forward)
    if all(math.isclose(a, float(b), rel_tol=0.01) for a, b in zip(expected, spacing)):
        return None
    matching = ",".join(f"{s:g}" for s in expected)
    return (
        f"spacing {list(spacing)} (plans' axis order) differs from the pre-training spacing {list(xyz)} mm (x, y, z): "
        f"organs appear at another scale than the encoder learned; --spacing {matching} matches it"
    )


def adapt_plans(
    target: dict[str, Any],
    dataset_json: dict[str, Any],
    pretrained: dict[str, Any],
    plans_name: str,
    configuration: str = CONFIGURATION,
    spacing: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
) -> AdaptedPlans:
    """The target's plans with ``configuration`` running the pre-trained network (only that configuration is kept)."""
    meta = pretrained.get("mssl", {})
    if meta.get("format") != PLANS_FORMAT:
        raise PlansError(f"not an mssl nnU-Net plans fragment (format {meta.get('format')!r}, expected {PLANS_FORMAT!r})")
    dataset = target.get("dataset_name", "the target dataset")
    if configuration not in target.get("configurations", {}):
        raise PlansError(f"{dataset}: no configuration {configuration!r} in its plans (has {sorted(target.get('configurations', {}))})")
    config = copy.deepcopy(target["configurations"][configuration])
    if "inherits_from" in config:
        raise PlansError(f"{dataset}: configuration {configuration!r} inherits from another; use a full configuration such as 3d_fullres")
    check_channels(meta, dataset_json, dataset)
    notes = [n for n in [check_normalization(meta, config.get("normalization_schemes", []), dataset)] if n]

    stride = meta["total_stride"]
    if patch_size is not None:
        check_patch(patch_size, stride)
        config["patch_size"] = [int(p) for p in patch_size]
    else:
        fitted = fit_patch(config["patch_size"], stride)
        if fitted != list(config["patch_size"]):
            notes.append(f"patch size {list(config['patch_size'])} → {fitted} (multiples of the network's total stride {stride})")
        check_patch(fitted, stride)
        config["patch_size"] = fitted
    needs_preprocessing = spacing is not None and [float(s) for s in spacing] != [float(s) for s in config["spacing"]]
    if needs_preprocessing:
        notes.append(f"spacing {config['spacing']} → {list(spacing)}: preprocess with these plans before training")
        config["spacing"] = [float(s) for s in spacing]
        config["data_identifier"] = f"{plans_name}_{configuration}"
    notes += [n for n in [check_spacing(meta, config["spacing"], target.get("transpose_forward", [0, 1, 2]))] if n]
    config["architecture"] = copy.deepcopy(pretrained["configurations"][CONFIGURATION]["architecture"])

    plans = copy.deepcopy(target)
    plans["plans_name"] = plans_name
    plans["configurations"] = {configuration: config}
    plans["mssl"] = {**meta, "source_plans": target.get("plans_name")}
    return AdaptedPlans(plans=plans, notes=notes, needs_preprocessing=needs_preprocessing)


def write_nnunet_plans(
    dataset: str,
    weights: str | Path,
    plans_name: str = "nnUNetPlans_mssl",
    source_plans: str = "nnUNetPlans",
    configuration: str = CONFIGURATION,
    spacing: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
    preprocessed: str | Path | None = None,
) -> tuple[Path, AdaptedPlans]:
    """Write ``PLANS_NAME.json`` next to the target's plans; returns its path and what changed."""
    folder = dataset_folder(dataset, preprocessed)
    if plans_name == source_plans:
        raise PlansError(f"--plans-name must differ from --source-plans ({source_plans}); the target's own plans stay untouched")
    target = read_json(folder / f"{source_plans}.json", "the target's plans; run nnUNetv2_plan_and_preprocess first")
    dataset_json = read_json(folder / "dataset.json", "copied there by nnU-Net's planner")
    pretrained_file = find_pretrained_plans(weights)
    adapted = adapt_plans(target, dataset_json, read_json(pretrained_file, "mssl export"), plans_name, configuration, spacing, patch_size)
    adapted.plans["mssl"]["weights"] = str(ExportFolder(pretrained_file.parent).weights("nnunet").resolve())
    out = folder / f"{plans_name}.json"
    out.write_text(json.dumps(adapted.plans, indent=2) + "\n", encoding="utf-8")
    return out, adapted
