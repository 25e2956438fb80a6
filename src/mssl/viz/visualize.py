"""``mssl visualize RUN --volume FILE``: structure maps, registration overlays and loss curves of a run.

The volume is preprocessed exactly like the run's training data (the preset stored in its cache
index), the method is rebuilt from the run's config and its last checkpoint (read weights-only), and
three PNGs are written: ``features.png`` (PCA-RGB and k-means maps of the encoder's patch features),
``registration.png`` (GVSL runs: fixed / moving / warped with the deformation grid) and ``curves.png``
(losses, and the probe curve of runs pre-trained with ``--probe``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from mssl.config import PresetName, PretrainConfig
from mssl.data.preprocess import PresetConfig, load_case
from mssl.data.sources import Case
from mssl.methods import build_method
from mssl.methods.base import PretrainMethod
from mssl.runs import PretrainRun
from mssl.viz.curves import plot_curves
from mssl.viz.features import DEFAULT_CLUSTERS, DEFAULT_STRIDE, plot_structure_maps, structure_maps
from mssl.viz.registration import plot_registration
from mssl.viz.slices import slice_centre
from mssl.weights.run_reader import read_run
from mssl.weights.sidecar import data_provenance

MAX_SIDE = 192  # larger volumes are cropped around the body's centre to keep CPU inference to seconds
METHOD_PREFIX = "method."
GVSL = "gvsl"


def load_run_method(run: Path) -> tuple[PretrainConfig, PretrainMethod, int]:
    """The run's config, its method with the last checkpoint's weights (eval mode), and the step."""
    _, checkpoint, config = read_run(run)
    method = build_method(config)
    state = {k[len(METHOD_PREFIX) :]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(METHOD_PREFIX)}
    method.load_state_dict(state, strict=True)
    return config, method.eval(), int(checkpoint.get("global_step", 0))


def gvsl_objective(method: PretrainMethod) -> PretrainMethod | None:
    """The GVSL method inside a run (itself, or the ``gvsl`` objective of a combined run)."""
    if method.name == GVSL:
        return method
    objectives = getattr(method, "objectives", None)
    return objectives[GVSL] if objectives is not None and GVSL in objectives else None


def fit_to_grid(image: torch.Tensor, size: tuple[int, ...], centre: tuple[int, ...]) -> torch.Tensor:
    """``image`` (C, X, Y, Z) cut or padded (with its minimum) to ``size`` around ``centre``."""
    pads, starts = [], []
    for n, s, c in zip(image.shape[1:], size, centre):
        start = min(max(c - s // 2, 0), max(n - s, 0))
        starts.append(start)
        pads.append(max(s - n, 0))
    cropped = image[:, starts[0] : starts[0] + size[0], starts[1] : starts[1] + size[1], starts[2] : starts[2] + size[2]]
    padding = [p for pad in reversed(pads) for p in (pad // 2, pad - pad // 2)]  # F.pad wants last axis first
    return F.pad(cropped, padding, value=float(image.min()))


def stride_size(shape: tuple[int, ...], stride: int, max_side: int = MAX_SIDE) -> tuple[int, ...]:
    """Each side rounded up to a multiple of ``stride``, capped at ``max_side`` (rounded down to the stride)."""
    cap = max(stride, max_side // stride * stride)
    return tuple(min(-(-n // stride) * stride, cap) for n in shape)


def _moving_volume(config: PretrainConfig, volume: Path, moving: Path | None, preset: PresetConfig) -> torch.Tensor:
    """The second image of the GVSL pair: ``moving`` if given, else another case of the run's cache."""
    if moving is not None:
        return torch.from_numpy(load_case(Case("moving", Path(moving)), preset)["image"])
    from mssl.data.cache import CacheIndex

    if config.data.cache is None or not Path(config.data.cache).is_dir():
        raise FileNotFoundError(f"the run's cache {config.data.cache} is gone; pass --moving FILE for the registration figure")
    index = CacheIndex.open(config.data.cache)
    own = str(Path(volume).resolve())
    others = [c for c in index.cases if str(Path(c.record.get("image_source", "")).resolve()) != own]
    if not others:
        raise ValueError(f"{config.data.cache}: no case other than {volume} to register; pass --moving FILE")
    return torch.from_numpy(index.image(others[0].case_id).copy())


@torch.no_grad()
def registration_visuals(method: PretrainMethod, fixed: torch.Tensor, moving: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """Run a GVSL method (eval mode: no spatial augmentation) on one pair of (C, X, Y, Z) crops."""
    from mssl.methods.gvsl import PAIR_KEY

    parameter = next(method.parameters())
    pair = torch.stack([fixed, moving])[None].to(parameter.device, parameter.dtype)  # (1, 2, C, X, Y, Z)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the appearance damage of A is random
        return method.eval()({PAIR_KEY: pair}).visuals


def visualize(
    run: str | Path,
    volume: str | Path,
    out: str | Path | None = None,
    moving: str | Path | None = None,
    stride: int = DEFAULT_STRIDE,
    clusters: int = DEFAULT_CLUSTERS,
    preset: PresetName | PresetConfig | None = None,
    seed: int = 0,
    spacing: tuple[float, float, float] | None = None,
) -> list[Path]:
    """Write features.png, registration.png (GVSL runs) and curves.png for ``run``; returns their paths.

    preset: preprocessing of ``volume``, a name ("ct", "mri", "none") with ``spacing``, or a PresetConfig
    (default: the preset of the run's cache; needed when it is gone).
    """
    if isinstance(preset, str):
        preset = PresetConfig(name=preset, spacing=spacing)
    elif spacing is not None:
        raise ValueError("spacing goes with a preset name (preset='ct', spacing=...), or inside a PresetConfig")
    run = Path(run)
    out = Path(out) if out is not None else PretrainRun(run).figures
    config, method, step = load_run_method(run)
    if preset is None:
        _, preset = data_provenance(config.data)
        if preset is None:
            raise FileNotFoundError(f"the cache of {run} ({config.data.cache}) is gone; pass --preset to preprocess {volume}")
    case = load_case(Case("volume", Path(volume)), preset)
    image, spacing = torch.from_numpy(case["image"]), case["spacing"]
    title = f"{run.name}: {config.method} on {config.backbone.name}, step {step}"

    backbone = method.backbone
    image = fit_to_grid(image, stride_size(tuple(image.shape[1:]), backbone.stride), slice_centre(image[0].numpy()))
    paths = [plot_structure_maps(structure_maps(backbone, image, stride, clusters, seed), out / "features.png", spacing, title)]
    gvsl = gvsl_objective(method)
    if gvsl is not None:
        roi = tuple(config.gvsl.roi)
        fixed = fit_to_grid(image, roi, slice_centre(image[0].numpy()))
        other = _moving_volume(config, Path(volume), Path(moving) if moving else None, preset)
        other = fit_to_grid(other, roi, slice_centre(other[0].numpy()))
        visuals = registration_visuals(gvsl, fixed, other, seed)
        paths.append(plot_registration(visuals, out / "registration.png", spacing, title))
    paths.append(plot_curves(run, out / "curves.png", title))
    return paths
