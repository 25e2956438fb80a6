"""The benchmark report's paired comparison: each seed's method − scratch difference on the same cases."""

from __future__ import annotations

import math
from pathlib import Path

from mssl.viz.benchmark_report import BenchmarkResult, benchmark_markdown, paired_to_scratch
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


def test_a_difference_that_prints_as_zero_is_a_tie_not_a_win() -> None:
    result = BenchmarkResult(Path("unused"), dice={"scratch": {2: [0.30000]}, "gvsl": {2: [0.30002]}}, hd95={"scratch": {2: [1.0]}, "gvsl": {2: [1.0]}}, per_class={"scratch": {2: {}}, "gvsl": {2: {}}})
    config = BenchmarkConfig(data=Path("dataset.json"), methods=["scratch", "gvsl"], labels=[2], seeds=1)
    row = next(line for line in benchmark_markdown(result, config, seconds=0.0).splitlines() if line.startswith("| gvsl | +"))
    assert "+0.000 ± 0.000 (0/1)" in row


def test_plot_shows_dice_on_the_full_zero_to_one_scale(tmp_path: Path) -> None:
    """Dice 0.00022 vs 0.00035 must not fill the axis (matplotlib would auto-scale it to look like a gap)."""
    from unittest import mock

    from mssl.viz.benchmark_report import plot_curves

    tiny = BenchmarkResult(Path("unused"), dice={"scratch": {2: [0.00022]}, "gvsl": {2: [0.00035]}})
    with mock.patch("matplotlib.axes.Axes.set_ylim") as set_ylim:
        assert plot_curves(tiny, tmp_path / "plot.png").is_file()
    assert set_ylim.call_args == mock.call(0, 1)  # the last word on the axis (errorbar sets its own first)


def test_print_config_lists_every_key_with_its_default() -> None:
    from typer.testing import CliRunner

    from mssl.cli import app

    result = CliRunner().invoke(app, ["benchmark", "--print-config"])
    assert result.exit_code == 0, result.output
    assert "labels: [2, 5, 10]" in result.output and "pretrain_steps: 1000" in result.output
    assert "#   max_roi_voxels: 1048576" in result.output  # a FinetuneConfig key of the finetune: section


def test_size_flags_merge_into_the_yaml_sections(tmp_path: Path) -> None:
    from mssl.config import build_config

    yaml_file = tmp_path / "bench.yaml"
    yaml_file.write_text("finetune: {lr: 0.01}\nbackbone: {name: unet}\n", encoding="utf-8")
    config = build_config(BenchmarkConfig, yaml_file, data=Path("dataset.json"), finetune={"steps": 300}, backbone={"unet_channels": (8, 16)})
    assert config.finetune == {"lr": 0.01, "steps": 300}
    assert config.backbone.name == "unet" and config.backbone.unet_channels == (8, 16)


def test_terminal_report_has_no_markdown_image_markup(tmp_path: Path) -> None:
    from rich.console import Console

    from mssl.viz.benchmark_report import show_report

    config = BenchmarkConfig(data=Path("dataset.json"), methods=["scratch", "gvsl"], labels=[2, 5], seeds=3)
    (tmp_path / "benchmark.md").write_text(benchmark_markdown(_result(), config, seconds=0.0), encoding="utf-8")
    console = Console(record=True, width=200)
    show_report(console, tmp_path)
    shown = console.export_text()
    assert "![" not in shown and "](label_efficiency.png)" not in shown
    assert f"plot: {tmp_path / 'label_efficiency.png'}" in shown and "gvsl" in shown
