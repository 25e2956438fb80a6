"""Cells of the markdown tables in reports: mean ± std over seeds or cases, missing values left out."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count over the finite values; NaN mean when none."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return float(finite.mean()), std, int(finite.size)


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'0.812 ± 0.041 (n=12)' or '–' when nothing was measured."""
    mean, std, count = mean_std(values)
    if count == 0:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={count})"
