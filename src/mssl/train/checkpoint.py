"""Checkpoint files that are never half-written, and where a run keeps them.

Lightning's ``TorchCheckpointIO`` stages the bytes in the system temp folder and then moves them;
when that folder is on another filesystem the move is a copy, so a crash mid-copy leaves a truncated
``last.ckpt`` in place of the good one. Here the bytes go to a temporary file next to the target,
are flushed to disk, and replace the target in one ``os.replace``: a reader sees the old checkpoint
or the new one, never a partial file.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mssl.runs import PERIODIC_CHECKPOINT_PREFIX, PretrainRun
from mssl.weights.checks import listed, nonfinite_names

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"  # hidden ``.{name}.XXXX.partial`` files hold a write in progress
# The parts of a Lightning checkpoint a resumed run continues from: weights (student, EMA teacher, queues) and moments.
TRAINING_STATE_KEYS = ("state_dict", "optimizer_states")


class NonFiniteStateError(RuntimeError):
    """The training state holds NaN/inf values: the run diverged and must not overwrite a good checkpoint."""


def check_state_finite(checkpoint: dict[str, Any], step: int) -> None:
    """Raise :class:`NonFiniteStateError` naming the NaN/inf tensors of a checkpoint about to be written.

    A finite loss does not prove finite weights (an enormous step can overflow them), and every later
    checkpoint would carry the damage; stopping here keeps ``last.ckpt`` at the last finite state.
    """
    bad = nonfinite_names({key: checkpoint.get(key) for key in TRAINING_STATE_KEYS})
    if bad:
        raise NonFiniteStateError(
            f"step {step}: the weights or optimiser state hold NaN/inf in {listed(bad)}; the run diverged "
            f"and stops without writing a checkpoint, so {PretrainRun(Path()).checkpoint} keeps the last finite state. "
            "Try a lower optim.lr, --grad-clip 1.0 or more warm-up steps."
        )


def checkpoint_step(path: Path) -> int:
    """The global step a checkpoint was taken at (read through a memory map, without loading the tensors)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to resume from: the newest intact one of last.ckpt and the periodic ones (a crash
    can land between the periodic write and the last.ckpt refresh). A file that cannot be read (truncated
    by a full disk, replaced by a pickle that needs code) is skipped with a warning naming it."""
    run = PretrainRun(run_dir)
    last, periodic = run.checkpoint, run.periodic_checkpoints()
    last_step = _readable_step(last) if last.is_file() else None
    newest = last if last_step is not None else None
    skipped = last.is_file() and last_step is None
    for path in periodic:  # newest first; the name carries the step, reading it proves the file intact
        if last_step is not None and _named_step(path) <= last_step:
            break
        if _readable_step(path) is not None:
            newest = path
            break
        skipped = True
    if skipped and newest is not None:
        log.warning("resuming from %s (step %d), the newest intact checkpoint", newest, checkpoint_step(newest))
    return newest


def _named_step(path: Path) -> int:
    return int(path.stem.removeprefix(PERIODIC_CHECKPOINT_PREFIX))


def _readable_step(path: Path) -> int | None:
    try:
        return checkpoint_step(path)
    except pickle.UnpicklingError:
        log.warning("%s refused and skipped: it needs pickled code, which weights-only loading never runs", path)
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as error:
        log.warning("%s is unreadable, skipped (%s)", path, (str(error).strip() or type(error).__name__).splitlines()[0])
    return None


def remove_partial_writes(run_dir: Path) -> int:
    """Delete temporary files of checkpoint writes a killed process never finished; returns how many."""
    partial = list(PretrainRun(run_dir).checkpoints.glob(f".*{PARTIAL_SUFFIX}"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)


def atomic_torch_save(obj: Any, path: Path, save: Callable[[Any, Any], None] = torch.save) -> None:
    """``save(obj, file)`` to ``path`` through a same-folder temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes go through :func:`atomic_torch_save`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, Path(path))
