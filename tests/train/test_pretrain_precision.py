"""``--precision bf16-mixed`` through Lightning's precision plugin tracks the float32 run, term by term.

bf16 has no hardware support on this CPU (autocast is ~10× slower than float32 here), so the runs are
tiny: a few steps of the test-sized U-Net on real cached CT crops.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import TINY_PRETRAIN

import mssl

STEPS = 3
# Stated tolerance. Step 0 (same weights, same batch: bf16 numerics alone): every logged loss term within
# 2 % of the float32 run's (relative, so the ~1e-5 smoothness term is held to it too), or 2e-3 absolutely
# for a term near 0 (bf16 keeps ~3 significant digits; S²DC global has been 0.008). bf16 keeps 8 bits of
# mantissa (0.4 % per rounding) in the backbone's convolutions and heads; the losses themselves (NCC,
# Sinkhorn, cosine / InfoNCE logits, warps, smoothness, restoration) run in float32. Later steps: within
# 10 % or 1e-2, because Adam divides each gradient by its own running scale, so bf16 rounding of a small
# gradient becomes a full-size step difference (measured: S²DC global 0.183 vs 0.193 at step 1).
FIRST_STEP = {"rel": 0.02, "abs": 2e-3}
LATER_STEPS = {"rel": 0.10, "abs": 1e-2}
# S²DC on its smallest field: two 32³ grid crops (bf16 3-D convolutions take ~20 CPU s per GVSL step here).
SMALL_FIELD = {"s2dc.field_size": [64, 32, 32]}
TERMS = {"gvsl": ("loss", "ncc", "restore", "smooth"), "s2dc": ("loss", "p2p", "p2s", "global")}


def _losses(run: Path, terms: tuple[str, ...]) -> list[dict[str, float]]:
    with (run / "logs" / "metrics.csv").open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    return [{term: float(row[f"train/{term}"]) for term in terms} for row in rows]


@pytest.mark.realdata
@pytest.mark.parametrize("method", ["gvsl", "s2dc"])
def test_bf16_mixed_run_tracks_the_float32_run(tiny_ct_cache: Path, tmp_path: Path, method: str) -> None:
    runs = {
        precision: mssl.pretrain(
            method=method, data=tiny_ct_cache, out=tmp_path / precision, steps=STEPS, precision=precision, **TINY_PRETRAIN, **SMALL_FIELD
        )
        for precision in ("32", "bf16-mixed")
    }
    full, mixed = (_losses(runs[precision], TERMS[method]) for precision in ("32", "bf16-mixed"))
    assert len(full) == len(mixed) == STEPS
    for step, (reference, value) in enumerate(zip(full, mixed)):
        assert value == pytest.approx(reference, **(LATER_STEPS if step else FIRST_STEP)), f"step {step}"
    assert mixed != full  # the bf16 run did compute in bf16


