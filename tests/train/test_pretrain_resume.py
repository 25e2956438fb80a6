"""Exact resume after a real crash: `kill -9` a CPU run mid-way, resume it, compare with an uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mssl.train.checkpoint import checkpoint_step
from tests.conftest import SUBPROCESS_ENV as ENV, TINY_PRETRAIN_FLAGS

MSSL = str(Path(sys.executable).with_name("mssl"))
STEPS, EVERY = 10, 2
# S²DC exercises everything a checkpoint must carry: EMA teacher, key queue, AdamW moments, warm-up + cosine.
TINY_S2DC = [
    *TINY_PRETRAIN_FLAGS, "--method", "s2dc", "--steps", str(STEPS), "--checkpoint-every", str(EVERY),
    "--warmup-steps", "3", "--workers", "1", "--seed", "7",
]


@pytest.fixture
def cache(tiny_ct_cache: Path) -> Path:
    return tiny_ct_cache


def _start(cache: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [MSSL, "pretrain", *TINY_S2DC, "--data", str(cache), "--out", str(out), *extra]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, encoding="utf-8")


def _kill_after_checkpoint(process: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert process.poll() is None, f"run ended before {checkpoint.name}: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {checkpoint.name} after {timeout} s"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
@pytest.mark.realdata
def test_resume_after_kill_9_matches_an_uninterrupted_run(cache: Path, tmp_path: Path) -> None:
    reference = _start(cache, tmp_path / "reference")
    crashed = tmp_path / "crashed"
    victim = _start(cache, crashed)
    _kill_after_checkpoint(victim, crashed / "checkpoints" / "step-0000004.ckpt")
    assert victim.returncode == -signal.SIGKILL
    assert not (crashed / "summary.json").exists()  # it really died mid-run
    killed_at = max(checkpoint_step(p) for p in (crashed / "checkpoints").glob("*.ckpt"))
    assert 4 <= killed_at < STEPS

    resumed = subprocess.run([MSSL, "pretrain", "--out", str(crashed), "--resume"], env=ENV, capture_output=True, text=True, encoding="utf-8")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait() == 0, reference.stderr.read()[-3000:]

    expected = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)
    actual = torch.load(crashed / "checkpoints" / "last.ckpt", weights_only=True)
    assert actual["global_step"] == expected["global_step"] == STEPS
    assert actual["state_dict"].keys() == expected["state_dict"].keys()
    for key, value in expected["state_dict"].items():  # student, EMA teacher, queue, dustbin
        torch.testing.assert_close(actual["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    for (_, a), (_, e) in zip(sorted(actual["optimizer_states"][0]["state"].items()), sorted(expected["optimizer_states"][0]["state"].items())):
        torch.testing.assert_close(a["exp_avg_sq"], e["exp_avg_sq"], rtol=0, atol=1e-6)
    assert actual["lr_schedulers"][0]["_last_lr"] == expected["lr_schedulers"][0]["_last_lr"]
    summary = (crashed / "summary.json").read_text(encoding="utf-8")
    assert f'"resumed_from_step": {killed_at}' in summary
