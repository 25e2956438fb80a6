"""The benchmark report's paired comparison: each seed's method − scratch difference on the same cases."""

from __future__ import annotations

import math
from pathlib import Path

from mssl.downstream.benchmark import BenchmarkResult, benchmark_markdown, paired_to_scratch
from mssl.downstream.config import BenchmarkConfig


def _result() -> BenchmarkResult:
    return BenchmarkResult(
        Path("unused"),
        dice={
            "scratch": {2: [0.10, 0.30, 0.20], 5: [0.40, 0.50, float("nan")]},
            "gvsl": {2: [0.15, 0.25, 0.30], 5: [0.45, 0.55, 0.60]},
        },
        hd95={"scratch": {2: [1.0] * 3, 5: [1.0] * 3}, "gvsl": {2: [1.0] * 3, 5: [1.0] * 3}},
        per_class={"scratch": {2: {}, 5: {}}, "gvsl": {2: {}, 5: {}}},
    )


def test_differences_pair_seeds_and_drop_missing_ones() -> None:
    paired = paired_to_scratch(_result())
    assert list(paired) == ["gvsl"]
    assert [round(d, 6) for d in paired["gvsl"][2]] == [0.05, -0.05, 0.1]
    assert [round(d, 6) for d in paired["gvsl"][5]] == [0.05, 0.05]  # seed 2 has no scratch score
    assert paired_to_scratch(BenchmarkResult(Path("unused"), dice={"gvsl": {2: [0.5]}})) == {}


def test_report_shows_mean_std_and_seeds_won() -> None:
    config = BenchmarkConfig(data=Path("dataset.json"), methods=["scratch", "gvsl"], labels=[2, 5], seeds=3)
    text = benchmark_markdown(_result(), config, seconds=0.0)
    row = next(line for line in text.splitlines() if line.startswith("| gvsl | +"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    mean_k2, std_k2 = 0.1 / 3, math.sqrt(((0.05 - 0.1 / 3) ** 2 + (-0.05 - 0.1 / 3) ** 2 + (0.1 - 0.1 / 3) ** 2) / 2)
    assert cells[1] == f"{mean_k2:+.3f} ± {std_k2:.3f} (2/3)"
    assert cells[2] == "+0.050 ± 0.000 (2/2)"
