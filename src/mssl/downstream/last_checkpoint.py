"""RUN/last.ckpt of a fine-tuning run: everything ``--resume`` needs to continue it.

Network, optimiser moments, schedule, the loop's counters (step, best score, validation history) and
the global RNG states, as tensors and plain values (loaded with ``weights_only=True``), written through
a same-folder temporary file and an atomic rename. The case order continues exactly (the sampler's
draws are replayed and skipped); the patch and augmentation stream is reseeded from (seed, rank, step), so a resumed
run is a faithful continuation but not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any, Iterable, Sequence

import torch
from torch import nn

from mssl.train.checkpoint import atomic_torch_save
from mssl.train.loggers import drop_rows_after
from mssl.runs import FinetuneRun
from mssl.train.seeding import rng_state, set_rng_state


def save_last(out: Path, network: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, loop: dict[str, Any]) -> Path:
    """Write RUN/last.ckpt; ``loop``: the loop's own counters (plain values)."""
    path = FinetuneRun(out).checkpoint
    state = {
        "network": network.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng_state(),
        "loop": loop,
    }
    atomic_torch_save(state, path)
    return path


def load_last(out: Path, network: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any) -> dict[str, Any]:
    """Restore network, optimiser, schedule and RNG from RUN/last.ckpt; returns the loop's counters."""
    path = FinetuneRun(out).checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; run without --resume to start")
    state = torch.load(path, map_location="cpu", weights_only=True)
    network.load_state_dict(state["network"])
    optimizer.load_state_dict(state["optimizer"])
    # the schedule's shape follows the current config (a resumed run may have more steps); its position is restored
    schedule.load_state_dict({**state["schedule"], "lr_lambdas": [None] * len(state["schedule"]["lr_lambdas"])})
    set_rng_state(state["rng"])
    return state["loop"]


def skip_draws(sampler: Iterable[int], count: int) -> list[int]:
    """The sampler's draws after the first ``count``: a resumed loop sees the cases it would have seen."""
    return list(sampler)[count:]


def open_log(path: Path, header: Sequence[str], resumed_step: int | None) -> tuple[IO[str], Any]:
    """``metrics.csv`` opened for writing: new with its header, or (resuming) kept up to ``resumed_step`` and appended to."""
    if resumed_step is None or not path.is_file():
        file = open(path, "w", newline="", encoding="utf-8")
        writer = csv.writer(file)
        writer.writerow(header)
        return file, writer
    drop_rows_after(path, resumed_step + 1)
    file = open(path, "a", newline="", encoding="utf-8")
    return file, csv.writer(file)
