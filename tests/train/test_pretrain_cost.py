"""What `mssl pretrain` says about its cost: the plan, measured time, --dry-run, plain lines in a log, checkpoint retention."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_UNET_FLAGS, TINY_UNET_OPTIONS
from mssl.cli import app
from mssl.train.cost import MEASURED_STEPS, WARMUP_STEPS

TINY_UNET = [*TINY_UNET_FLAGS, "--roi", "32", "--workers", "0"]


@pytest.mark.realdata
def test_dry_run_prints_plan_and_projection_and_writes_nothing(tiny_ct_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    arguments = ["pretrain", "--method", "gvsl", "--data", str(tiny_ct_cache), "--out", str(run), *TINY_UNET]
    result = CliRunner().invoke(app, [*arguments, "--steps", "500", "--devices", "4", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    plan = next(line for line in lines if line.startswith("plan: "))
    assert "trainable, 0 frozen" in plan and "4 crops (4 × 32×32×32), 131.07 k voxels" in plan  # GVSL: batch 2 of pairs and "500 steps on 4 devices" in plan
    assert any(line.startswith("measured: ") and "s/step · ETA" in line and "peak RSS" in line for line in lines)
    assert f"dry run: {WARMUP_STEPS + MEASURED_STEPS} steps run ({WARMUP_STEPS} warm-up)" in result.output
    projection = next(line for line in lines if line.startswith("projection: "))
    assert "500 steps ×" in projection and "on 4 devices" in projection and "ideal data-parallel scaling" in projection
    assert not run.exists()  # the real run starts clean afterwards
    assert CliRunner().invoke(app, [*arguments, "--steps", "1"]).exit_code == 0


@pytest.mark.realdata
def test_log_file_gets_plain_lines_and_only_the_newest_checkpoints_stay(
    tiny_ct_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mssl

    steps = WARMUP_STEPS + MEASURED_STEPS
    run = mssl.pretrain(
        method="gvsl", data=tiny_ct_cache, out=tmp_path / "run", steps=steps, checkpoint_every=1, keep_checkpoints=2,
        backbone=TINY_UNET_OPTIONS, roi=32, workers=0, **{"logging.line_every_steps": 3},
    )
    output = capsys.readouterr().out  # not a terminal: no bar, plain lines
    progress = [line for line in output.splitlines() if line.startswith("step ")]
    assert [line.split(" · ")[0] for line in progress] == ["step 3/7", "step 6/7", "step 7/7"]
    assert all(name in progress[-1] for name in ("loss ", "ncc ", "lr ", "s/step", "ETA 0m 00s"))
    assert any(line.startswith("measured: ") for line in output.splitlines())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-0000006.ckpt", "step-0000007.ckpt"]
