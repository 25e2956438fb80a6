"""The host-memory ceiling of CPU runs (mssl.train.memory): a step too large for the machine is one clear
error, not the kernel's OOM killer."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import DEMO_DATA, TINY_UNET_CHANNELS, TINY_UNET_FLAGS, demo_subset
from mssl.cli import app
from mssl.train import memory
from mssl.train.memory import OutOfMemoryError, memory_ceiling

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc are Linux's")
MiB = 2**20


def beyond_the_heap(extra: int) -> int:
    """Float32 elements of an allocation that must grow the data segment by more than ``extra`` bytes: the heap's
    free part is at most the whole segment (with MALLOC_MMAP_MAX_=0, as the README runs the suite, freed memory
    stays in the heap and a smaller allocation could reuse it)."""
    return (memory.data_segment_bytes() + extra) // 4


def test_an_allocation_beyond_the_ceiling_is_one_named_error_and_the_limit_comes_back() -> None:
    before = resource.getrlimit(resource.RLIMIT_DATA)
    with pytest.raises(OutOfMemoryError, match=r"^runs/x: a step needs more memory than the 0\.2 GiB"):
        with memory_ceiling("runs/x", available=256 * MiB):
            torch.empty(beyond_the_heap(512 * MiB))  # more than 0.9 × 256 MiB of growth
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    assert torch.empty(512 * MiB // 4).numel() == 128 * MiB  # unguarded again


def test_within_the_ceiling_nothing_changes_and_other_errors_pass_through() -> None:
    with memory_ceiling("runs/x", available=1024 * MiB):
        assert torch.ones(16 * MiB // 4).sum().item() == 4 * MiB
    with pytest.raises(ValueError, match="not memory"), memory_ceiling("runs/x", available=1024 * MiB):
        raise ValueError("not memory")


def test_processes_share_the_allowance() -> None:
    with pytest.raises(OutOfMemoryError, match=r"the 0\.4 GiB"), memory_ceiling("runs/x", processes=2, available=1024 * MiB):
        torch.empty(beyond_the_heap(600 * MiB))  # grows the segment by more than half of 0.9 GiB


def test_pretrain_on_a_machine_too_small_for_its_step_says_so_in_one_line(tiny_ct_cache: Path, tmp_path: Path, monkeypatch) -> None:
    """128³ GVSL pairs on the tiny U-Net with 64 MiB to spare: exit 1, one line naming the run, no traceback."""
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * MiB)
    run = tmp_path / "run"
    arguments = ["pretrain", "--method", "gvsl", "--data", str(tiny_ct_cache), "--out", str(run), *TINY_UNET_FLAGS, "--roi", "128", "--workers", "0"]
    for extra in (["--dry-run"], ["--steps", "2"]):
        result = CliRunner().invoke(app, [*arguments, *extra])
        assert result.exit_code == 1, result.output
        error = result.output.strip().splitlines()[-1]
        assert error.startswith(f"error: {run if extra[0] == '--steps' else 'dry run of ' + str(run)}: a step needs more memory than the 0.1 GiB")
        assert "can't allocate" not in result.output  # the allocator's own message is replaced, not shown beside it
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_finetune_on_a_machine_too_small_for_its_step_says_so_and_keeps_the_folder_clean(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * MiB)
    data = demo_subset(DEMO_DATA, tmp_path, {"train": ("train", 0, 1)})
    out = tmp_path / "run"
    arguments = ["finetune", "--data", str(data), "--out", str(out), "--backbone", "unet", "--unet-channels", ",".join(map(str, TINY_UNET_CHANNELS)),
                 "--roi", "128", "--spacing", "2", "--batch-size", "2", "--steps", "2"]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "300"})
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {out}: a step needs more memory than the 0.1 GiB") and "--max-roi-voxels" in errors[0]
    assert not (out / "best.safetensors").exists()
