"""Token correspondences between a field and its warped copy, by the exact inverse of the warp.

Tokens tile the field on a regular 3-D grid of cells of ``token_stride`` voxels (the grid crops'
token maps put side by side). A student token (unwarped field) and a teacher token (warped field)
correspond when each one's centre, mapped into the other view, lands in the other's cell (mutual
nearest neighbours). Tokens whose centre leaves the field stay unmatched (they belong to the dustbin).
Token index order is the row-major order of the (X, Y, Z) token grid, as ``tokens_to_field`` builds it.
"""

from __future__ import annotations

import torch

from mssl.views.similarity_warp import apply_affine, voxel_grid

UNMATCHED = -1


def token_grid_shape(field_size: tuple[int, int, int], token_stride: int) -> tuple[int, int, int]:
    """Number of tokens along each axis of the field."""
    if any(s % token_stride for s in field_size):
        raise ValueError(f"field size {field_size} is not a multiple of the token stride {token_stride}")
    return tuple(s // token_stride for s in field_size)  # type: ignore[return-value]


def token_centres(grid: tuple[int, int, int], token_stride: int, device: torch.device) -> torch.Tensor:
    """(N, 3) float64 voxel coordinates of the token cell centres, row-major over the token grid."""
    cells = voxel_grid(grid, device, torch.float64).reshape(-1, 3)
    return cells * token_stride + (token_stride - 1) / 2


def _cell_index(points: torch.Tensor, grid: tuple[int, int, int], token_stride: int) -> torch.Tensor:
    """Flat token index of the cell containing each (…, 3) point; ``UNMATCHED`` outside the field."""
    cells = torch.floor((points + 0.5) / token_stride).long()  # voxel i spans [i − ½, i + ½)
    limits = torch.tensor(grid, device=points.device)
    inside = ((cells >= 0) & (cells < limits)).all(-1)
    flat = (cells[..., 0] * grid[1] + cells[..., 1]) * grid[2] + cells[..., 2]
    return torch.where(inside, flat, torch.full_like(flat, UNMATCHED))


def token_correspondence(warp: torch.Tensor, field_size: tuple[int, int, int], token_stride: int) -> torch.Tensor:
    """(B, N) index of the teacher token matching each student token, or ``UNMATCHED``.

    ``warp`` is the (B, 4, 4) matrix with ``teacher_field(p) = student_field(warp p)``.
    """
    grid = token_grid_shape(field_size, token_stride)
    centres = token_centres(grid, token_stride, warp.device)  # (N, 3)
    batch = warp.shape[0]
    warp = warp.to(torch.float64)
    centres_b = centres.expand(batch, *centres.shape)
    # student token content lands at warp⁻¹ c in the teacher field; a teacher token samples warp d
    forward = _cell_index(apply_affine(torch.linalg.inv(warp), centres_b), grid, token_stride)  # (B, N)
    backward = _cell_index(apply_affine(warp, centres_b), grid, token_stride)  # (B, N)
    back_of_forward = torch.gather(backward, 1, forward.clamp(min=0))
    own = torch.arange(centres.shape[0], device=warp.device).expand(batch, -1)
    mutual = (forward != UNMATCHED) & (back_of_forward == own)
    return torch.where(mutual, forward, torch.full_like(forward, UNMATCHED))


def correspondence_matrix(match: torch.Tensor, num_teacher: int) -> torch.Tensor:
    """(B, N_student) match indices → (B, N_student, N_teacher) binary float matrix (one 1 per matched row)."""
    matrix = torch.zeros(*match.shape, num_teacher + 1, device=match.device)
    matrix.scatter_(-1, torch.where(match == UNMATCHED, num_teacher, match).unsqueeze(-1), 1.0)
    return matrix[..., :num_teacher]
