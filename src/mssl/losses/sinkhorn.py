"""Log-domain Sinkhorn optimal transport with a dustbin row and column (SuperGlue form).

Each of the M source and N target points carries mass 1; the dustbin row can absorb up to N and
the dustbin column up to M, so unmatched points have somewhere to go. The solver runs a fixed
number of unrolled iterations (differentiable end to end) and always in fp32, even under autocast.
"""

from __future__ import annotations

import math

import torch


def dustbin_log_marginals(m: int, n: int, device: torch.device, dtype: torch.dtype = torch.float32):
    """Log row (M + 1) and column (N + 1) marginals, each normalised to total mass 1."""
    norm = -math.log(m + n)
    log_rows = torch.full((m + 1,), norm, device=device, dtype=dtype)
    log_cols = torch.full((n + 1,), norm, device=device, dtype=dtype)
    log_rows[-1] = math.log(n) + norm
    log_cols[-1] = math.log(m) + norm
    return log_rows, log_cols


def augment_with_dustbin(scores: torch.Tensor, dustbin: torch.Tensor) -> torch.Tensor:
    """(B, M, N) scores → (B, M + 1, N + 1) with the scalar ``dustbin`` score in the extra row and column."""
    b, m, n = scores.shape
    column = dustbin.expand(b, m, 1)
    row = dustbin.expand(b, 1, n + 1)
    return torch.cat([torch.cat([scores, column], -1), row], 1)


def log_sinkhorn(scores: torch.Tensor, dustbin: torch.Tensor, iterations: int) -> torch.Tensor:
    """Log transport plan (B, M + 1, N + 1) for ``scores`` (B, M, N) already divided by the temperature.

    The plan is scaled by M + N so every real row and column sums to 1 (dustbin row: N, column: M).
    """
    device_type = scores.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        scores = scores.float()
        b, m, n = scores.shape
        couplings = augment_with_dustbin(scores, dustbin.float())
        log_rows, log_cols = dustbin_log_marginals(m, n, scores.device)
        u = torch.zeros(b, m + 1, device=scores.device)
        v = torch.zeros(b, n + 1, device=scores.device)
        for _ in range(iterations):
            u = log_rows - torch.logsumexp(couplings + v.unsqueeze(1), dim=2)
            v = log_cols - torch.logsumexp(couplings + u.unsqueeze(2), dim=1)
        return couplings + u.unsqueeze(2) + v.unsqueeze(1) + math.log(m + n)
