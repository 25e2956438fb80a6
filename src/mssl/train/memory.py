"""A memory ceiling for CPU runs: a step that needs more memory than the machine has free fails with one
clear line instead of the kernel's OOM killer (a silent ``Killed``, exit 137, sometimes taking other jobs).

The ceiling is ``RLIMIT_DATA`` (Linux), set to what the process already uses plus most of the memory the
machine has available, so PyTorch's allocator gets ``ENOMEM`` and raises before the machine runs out.
GPU runs are left alone (device memory is not the host's; CUDA reserves large host address ranges).
"""

from __future__ import annotations

import resource
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

GiB = 2**30
HEADROOM = 0.9  # of MemAvailable: the rest stays for the page cache and the other processes of the machine
PRETRAIN_ADVICE = "make the crops smaller (--roi, --set s2dc.field_size=...), use --batch-size 1 or --checkpoint-activations, or a larger machine"
ALLOCATOR_FAILURES = ("can't allocate memory", "Cannot allocate memory", "MemoryError")


class OutOfMemoryError(RuntimeError):
    """A step needed more host memory than the ceiling allows."""


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (free memory the kernel can hand out without swapping); None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def data_segment_bytes() -> int:
    """What RLIMIT_DATA already counts for this process (VmData of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return 0


def is_allocation_failure(error: BaseException | None) -> bool:
    """An allocator's out-of-memory, raised here, re-raised from a DataLoader worker or wrapped by a MONAI
    transform ("applying transform ..." with the allocator's error as its cause)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, MemoryError) or any(text in str(error) for text in ALLOCATOR_FAILURES):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


@contextmanager
def memory_ceiling(
    what: str, advice: str = PRETRAIN_ADVICE, processes: int = 1, available: int | None = None, on_cpu: bool = True
) -> Iterator[None]:
    """Within the block, an allocation beyond the ceiling raises :class:`OutOfMemoryError` naming ``what``
    and ending with ``advice``.

    processes: how many training processes of this machine share its memory (CPU DDP).
    available: bytes to share (default: MemAvailable now). Off Linux, or for a GPU run (``on_cpu=False``),
    the block runs unguarded.
    """
    available = available_bytes() if available is None else available
    if not on_cpu or not sys.platform.startswith("linux") or available is None:
        yield
        return
    allowance = int(available * HEADROOM / processes)
    previous = resource.getrlimit(resource.RLIMIT_DATA)
    ceiling = data_segment_bytes() + allowance
    if previous[0] != resource.RLIM_INFINITY:
        ceiling = min(ceiling, previous[0])  # never raise a limit somebody else set
    resource.setrlimit(resource.RLIMIT_DATA, (ceiling, previous[1]))
    try:
        yield
    except Exception as error:
        if not is_allocation_failure(error):
            raise
        raise OutOfMemoryError(
            f"{what}: a step needs more memory than the {allowance / GiB:.1f} GiB this machine has free for it; {advice}"
        ) from None
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, previous)
