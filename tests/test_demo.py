"""The embedded demo end to end (fast sizes), and `mssl visualize` on the runs it leaves behind."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mssl.cli import app
from mssl.data.demo import demo_dataset

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEMO_BYTES_LIMIT = 5_000_000


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    import mssl

    out = tmp_path_factory.mktemp("demo")
    report = mssl.demo(out, fast=True)
    return out, report


def test_embedded_sample_is_small_real_and_attributed():
    folder = demo_dataset()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= DEMO_BYTES_LIMIT
    datalist = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    entries = datalist["training"]
    assert {e["split"] for e in entries} == {"train", "test"}
    assert all((folder / e["image"]).is_file() and (folder / e["label"]).is_file() for e in entries)
    notice = (folder / "NOTICE.md").read_text(encoding="utf-8")
    assert "MIT License" in notice and "Babier" in notice and "TCIA" in notice


def test_fast_demo_writes_report_exports_probes_and_figures(demo_run):
    from mssl.data.cache import CacheIndex
    from mssl.weights.inspect import inspect_weights
    from mssl.weights.sidecar import read_sidecar

    out, report = demo_run
    assert report == out / "report.md"
    text = report.read_text(encoding="utf-8")
    for heading in ("## Stages", "## Frozen-feature probes", "S²DC on Swin-UNETR", "GVSL on the 3D U-Net", "## Data notice"):
        assert heading in text
    assert text.count("| pretrained |") == 2 and text.count("| random |") == 2
    timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
    assert timings["total_s"] > 0 and "pre-train s2dc" in timings["stages_s"]
    for method, target in (("s2dc", "swinunetr"), ("gvsl", "unet")):
        weights = out / "runs" / method / "export" / "encoder.safetensors"
        loaded = inspect_weights(weights, into=target)
        assert loaded.ok and not loaded.mismatched
        sidecar = read_sidecar(weights)
        assert sidecar.data.cases == 2 and sidecar.spacing == (8.0, 8.0, 8.0)  # the train split only
        assert sidecar.data.index_hash == CacheIndex.open(out / "cache").select(split="train").hash()
        assert sidecar.preset.name == "ct" and sidecar.steps == 2
        assert (out / "probes" / method / "probe.json").is_file()
    figures = sorted(p.relative_to(out).as_posix() for p in (out / "figures").rglob("*.png"))
    assert figures == [
        "figures/gvsl/curves.png", "figures/gvsl/features.png", "figures/gvsl/registration.png",
        "figures/s2dc/curves.png", "figures/s2dc/features.png",
    ]
    for figure in figures:
        assert (out / figure).read_bytes()[:8] == PNG_MAGIC
        assert f"]({figure})" in text


def test_cli_visualize_on_a_gvsl_run(demo_run, tmp_path):
    out, _ = demo_run
    volume = demo_dataset() / "imagesTr" / "pt_22.nii.gz"
    moving = demo_dataset() / "imagesTr" / "pt_31.nii.gz"
    result = runner.invoke(app, ["visualize", str(out / "runs" / "gvsl"), "--volume", str(volume), "--moving", str(moving),
                                 "--out", str(tmp_path), "--stride", "2", "--clusters", "3"])
    assert result.exit_code == 0, result.output
    for name in ("features.png", "registration.png", "curves.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    result = runner.invoke(app, ["visualize", str(out / "runs" / "gvsl"), "--volume", str(volume), "--stride", "3"])
    assert result.exit_code == 2 and "strides" in result.output


def test_report_states_the_recorded_timings_and_links_what_is_inside_out(tmp_path):
    """report.md is rendered from timings.json's record alone; paths inside ``out`` are shown relative to it."""
    from mssl.pipelines.demo import FAST
    from mssl.viz.demo_report import demo_markdown

    class Probe:
        def markdown(self):
            return "| pretrained | 0.5 |"

    timings = {"stages_s": {"prepare": 2.4, "pre-train s2dc": 7.6}, "stages_cpu_s": {"prepare": 3.5, "pre-train s2dc": 12.4},
               "total_s": 10.0, "total_cpu_s": 15.9, "load_average_1min": [0.5, 3.25]}
    runs = {m: tmp_path / "runs" / m for m in ("s2dc", "gvsl")}
    exports = {m: run / "export" / "encoder.safetensors" for m, run in runs.items()}
    figures = {"gvsl": [tmp_path / "figures" / "gvsl" / "curves.png"]}
    text = demo_markdown(tmp_path, FAST, timings, {"s2dc": Probe(), "gvsl": Probe()}, figures, runs, exports, fast=True)
    assert "| prepare | 2 | 4 |" in text and "| pre-train s2dc | 8 | 12 |" in text and "| **total** | **10** | **16** |" in text
    assert "load average 0.5 at the start and 3.25 at the end" in text and "fast mode" in text
    assert "![curves](figures/gvsl/curves.png)" in text and text.count("| pretrained | 0.5 |") == 2
    assert "mssl inspect runs/s2dc/export/encoder.safetensors" in text and "mssl visualize runs/s2dc --volume" in text
    assert str(tmp_path) not in text


@pytest.mark.parametrize("name", ["demo", "visualize"])
def test_cli_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example: mssl " + name in result.output


def test_data_only_copies_the_packaged_dataset_and_never_overwrites(tmp_path):
    """`mssl demo --data-only`: an MSD folder a user can point every command at; a second call into the same
    folder is refused in one line and leaves the first copy as it was."""
    out = tmp_path / "data"
    result = runner.invoke(app, ["demo", "--data-only", "--out", str(out)])
    assert result.exit_code == 0, result.output
    datalist = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    entries = datalist["training"]
    assert len(entries) == 12 and {e["split"] for e in entries} == {"train", "test"}
    for entry in entries:  # relative paths that resolve inside the copy, bytes equal to the packaged files
        assert (out / entry["image"]).read_bytes() == (demo_dataset() / entry["image"]).read_bytes()
        assert (out / entry["label"]).is_file()
    (out / "dataset.json").write_text("edited", encoding="utf-8")
    again = runner.invoke(app, ["demo", "--data-only", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output and (out / "dataset.json").read_text(encoding="utf-8") == "edited"
