"""Two-process DDP on CPU (gloo) for each method, through the real CLI and Lightning's launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SUBPROCESS_ENV as ENV, TINY_PRETRAIN_FLAGS

MSSL = str(Path(sys.executable).with_name("mssl"))
STEPS = 2
TINY = [*TINY_PRETRAIN_FLAGS, "--roi", "32", "--workers", "0"]


@pytest.fixture
def cache(tiny_ct_cache: Path) -> Path:
    return tiny_ct_cache


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("method", ["s2dc", "gvsl"])
def test_two_process_cpu_ddp_run(cache: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / "run"
    command = [MSSL, "pretrain", "--method", method, *TINY, "--data", str(cache), "--out", str(out), "--steps", str(STEPS),
               "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr and "gloo" in result.stderr

    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == STEPS and summary["skipped_steps"] == 0
    if method == "s2dc":
        state = checkpoint["state_dict"]
        # one key per volume per rank per step, gathered from both ranks into every rank's queue
        assert int(state["method.queue.filled"]) == STEPS * 2
        keys = state["method.queue.keys"]
        assert not torch.allclose(keys[0], keys[1])  # rank 0's and rank 1's keys of step 0 differ (different crops)
