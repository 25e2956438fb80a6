"""Where the voxels of an S²DC global-view (teacher) crop come from, for our crop affine and the official one.

L_g contrasts each student crop with its teacher crop (positive) and with the other crops of the field
(negatives). A teacher crop voxel reads either its own student crop, a neighbouring crop (content of a
negative), or nothing (zero padding). Measured on the default 384×384×96 field with roi 96 (4×4×1 crops),
on an 8³ lattice of points per crop, for:
  - ours: rotation ±10° about z, scale 0.95–1.05 per axis, in-plane shift ±0.0625·roi, read from the field;
  - official ranges (scale as intended, 0.95–1.05): rotation about x and y of ±U(0, r), r = |randint(−20, 20)|°,
    in-plane shift ±U(0, t), t = |randint(−24, 24)| voxels; on the crop alone (zero padding, as the
    official RandAffine) and read from the field (our sampling with the official ranges).
Results go to benchmarks/results/s2dc_global_view.md.

    python benchmarks/s2dc_global_view.py [--draws 2000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mssl.config import S2DCConfig
from mssl.models.warp import affine_matrix
from mssl.views.similarity_warp import random_crop_affines, voxel_grid

RESULTS = Path(__file__).resolve().parent / "results" / "s2dc_global_view.md"
FIELD, ROI, LATTICE = (384, 384, 96), 96, 8


def _official_affines(draws: int) -> torch.Tensor:
    """(draws, 4, 4) crop affines with the official rotation/shift ranges (pull-back, about the crop centre)."""
    rotation = torch.zeros(draws, 3, dtype=torch.float64)
    bound = torch.randint(-20, 21, (draws, 2)).abs().double()
    rotation[:, :2] = torch.deg2rad((torch.rand(draws, 2, dtype=torch.float64) * 2 - 1) * bound)
    scale = 0.95 + 0.1 * torch.rand(draws, 3, dtype=torch.float64)
    linear = affine_matrix(rotation, scale, torch.zeros(draws, 6, dtype=torch.float64), torch.zeros(draws, 3, dtype=torch.float64))
    shift = torch.zeros(draws, 3, dtype=torch.float64)
    shift[:, :2] = (torch.rand(draws, 2, dtype=torch.float64) * 2 - 1) * torch.randint(-24, 25, (draws, 2)).abs().double()
    centre = torch.full((3,), (ROI - 1) / 2, dtype=torch.float64)
    matrix = torch.eye(4, dtype=torch.float64).repeat(draws, 1, 1)
    matrix[:, :3, :3] = linear[:, :, :3]
    matrix[:, :3, 3] = centre - (linear[:, :, :3] @ centre) + shift
    return matrix


def _sources(matrices: torch.Tensor, crop_alone: bool) -> dict[str, torch.Tensor]:
    """Per draw, the share of lattice points reading the own crop, another crop, or padding (crop (1, 1, 0) of the field)."""
    step = ROI / LATTICE
    points = (voxel_grid((LATTICE,) * 3, torch.device("cpu"), torch.float64) * step + step / 2 - 0.5).reshape(-1, 3)
    read = points @ matrices[:, :3, :3].transpose(1, 2) + matrices[:, None, :3, 3]  # (D, P, 3) in crop coordinates
    own = ((read > -0.5) & (read < ROI - 0.5)).all(-1)
    if crop_alone:
        return {"own": own.double().mean(1), "other": torch.zeros(len(matrices), dtype=torch.float64), "padding": (~own).double().mean(1)}
    in_field = read + torch.tensor([ROI, ROI, 0.0], dtype=torch.float64)  # an inner crop: neighbours on every in-plane side
    inside = ((in_field > -0.5) & (in_field < torch.tensor(FIELD, dtype=torch.float64) - 0.5)).all(-1)
    return {"own": own.double().mean(1), "other": (inside & ~own).double().mean(1), "padding": (~inside).double().mean(1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = S2DCConfig()
    ours = random_crop_affines((args.draws,), ROI, config.crop_rotation_deg, config.crop_scale_range, config.crop_shift_fraction, torch.device("cpu"))
    official = _official_affines(args.draws)
    rows = [
        ("ours: ±10° about z, ±6 vox, read from the field", _sources(ours, crop_alone=False)),
        ("official ranges, crop alone (zero padding)", _sources(official, crop_alone=True)),
        ("official ranges, read from the field", _sources(official, crop_alone=False)),
    ]
    lines = [
        "# S²DC global view: where a teacher crop's voxels come from",
        "",
        f"`python benchmarks/s2dc_global_view.py --draws {args.draws}`: roi {ROI}, field {FIELD}, {LATTICE}³ points per "
        "crop; shares of the teacher crop that read its own student crop (the positive), neighbouring crops (negatives "
        "of the same field) or padding. Mean over draws, and the 5 % / 95 % quantiles.",
        "",
        "| crop affine | own crop | neighbouring crops | zero padding |",
        "|---|---|---|---|",
    ]
    for name, shares in rows:
        cells = [f"{s.mean():.3f} ({s.quantile(0.05):.3f}–{s.quantile(0.95):.3f})" for s in shares.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
