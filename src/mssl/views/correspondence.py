"""Token correspondences between a field and its warped copy, by the exact inverse of the warp.

Tokens tile the field on a regular 3-D grid of cells of ``token_stride`` voxels (the grid crops'
token maps put side by side). Each token cell is mapped into the other view
through the warp (or its exact inverse) at a few sub-cell sample points; the cell receiving most of
them is the token's nearest neighbour there. A student token (unwarped field) and a teacher token
(warped field) correspond when they are each other's nearest neighbours (mutual). Tokens mostly
mapped outside the field stay unmatched (they belong to the dustbin). Majority over sub-cell points
rather than the centre alone keeps labels right when a rotated cell straddles a cell boundary.
Token index order is the row-major order of the (X, Y, Z) token grid, as ``tokens_to_field`` builds it.
"""

from __future__ import annotations

import torch

from mssl.views.similarity_warp import apply_affine, voxel_grid

UNMATCHED = -1
SAMPLES_PER_AXIS = 7  # sub-cell points per axis; odd, so a shift never splits them evenly between two cells


def token_grid_shape(field_size: tuple[int, int, int], token_stride: int) -> tuple[int, int, int]:
    """Number of tokens along each axis of the field."""
    if any(s % token_stride for s in field_size):
        raise ValueError(f"field size {field_size} is not a multiple of the token stride {token_stride}")
    return tuple(s // token_stride for s in field_size)  # type: ignore[return-value]


def cell_samples(grid: tuple[int, int, int], token_stride: int, device: torch.device) -> torch.Tensor:
    """(N, S, 3) float64 voxel coordinates of S regularly spread points inside each token cell, row-major over the grid."""
    cells = voxel_grid(grid, device, torch.float64).reshape(-1, 1, 3) * token_stride - 0.5
    offsets = voxel_grid((SAMPLES_PER_AXIS,) * 3, device, torch.float64).reshape(1, -1, 3) + 0.5
    return cells + offsets * (token_stride / SAMPLES_PER_AXIS)


def _cell_index(points: torch.Tensor, grid: tuple[int, int, int], token_stride: int) -> torch.Tensor:
    """Flat token index of the cell containing each (…, 3) point; ``UNMATCHED`` outside the field."""
    cells = torch.floor((points + 0.5) / token_stride).long()  # voxel i spans [i − ½, i + ½)
    limits = torch.tensor(grid, device=points.device)
    inside = ((cells >= 0) & (cells < limits)).all(-1)
    flat = (cells[..., 0] * grid[1] + cells[..., 1]) * grid[2] + cells[..., 2]
    return torch.where(inside, flat, torch.full_like(flat, UNMATCHED))


def _majority_cell(warp: torch.Tensor, samples: torch.Tensor, grid: tuple[int, int, int], token_stride: int) -> torch.Tensor:
    """(B, N) cell receiving most of each token's mapped sample points (``UNMATCHED`` if mostly outside)."""
    batch = warp.shape[0]
    mapped = apply_affine(warp, samples.expand(batch, *samples.shape))  # (B, N, S, 3)
    return _cell_index(mapped, grid, token_stride).mode(-1).values


def token_correspondence(warp: torch.Tensor, field_size: tuple[int, int, int], token_stride: int) -> torch.Tensor:
    """(B, N) index of the teacher token matching each student token, or ``UNMATCHED``.

    ``warp`` is the (B, 4, 4) matrix with ``teacher_field(p) = student_field(warp p)``.
    """
    grid = token_grid_shape(field_size, token_stride)
    samples = cell_samples(grid, token_stride, warp.device)  # (N, S, 3)
    warp = warp.to(torch.float64)
    # student content at q lands at warp⁻¹ q in the teacher field; a teacher voxel p shows student warp p
    forward = _majority_cell(torch.linalg.inv(warp), samples, grid, token_stride)  # (B, N) student → teacher
    backward = _majority_cell(warp, samples, grid, token_stride)  # (B, N) teacher → student
    back_of_forward = torch.gather(backward, 1, forward.clamp(min=0))
    own = torch.arange(samples.shape[0], device=warp.device).expand(warp.shape[0], -1)
    mutual = (forward != UNMATCHED) & (back_of_forward == own)
    return torch.where(mutual, forward, torch.full_like(forward, UNMATCHED))


def correspondence_matrix(match: torch.Tensor, num_teacher: int) -> torch.Tensor:
    """(B, N_student) match indices → (B, N_student, N_teacher) binary float matrix (one 1 per matched row)."""
    matrix = torch.zeros(*match.shape, num_teacher + 1, device=match.device)
    matrix.scatter_(-1, torch.where(match == UNMATCHED, num_teacher, match).unsqueeze(-1), 1.0)
    return matrix[..., :num_teacher]
