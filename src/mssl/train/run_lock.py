"""One writer per run folder: two runs into one ``--out`` would interleave their logs and checkpoints.

The lock is an OS file lock (``filelock``, as ``mssl prepare`` uses for its cache), so it goes away
with its process: a folder whose holder was killed is free again, and ``--resume`` just works. Who
holds it (pid, host, start time) is written next to it, for the message the second writer gets.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from mssl.config import ConfigError

LOCK_NAME = ".run.lock"
HOLDER_NAME = ".run.holder"  # not the lock file itself: filelock truncates that when it opens it


class RunFolderBusy(ConfigError):
    """Another live process is writing to the run folder."""


@contextmanager
def run_lock(folder: str | Path) -> Iterator[None]:
    """Hold the run folder's lock for the block (creating the folder); :class:`RunFolderBusy` when taken.

    A folder this call created and the block left empty (a run refused before writing anything, e.g. a
    bad roi) is removed again, so a failed command leaves nothing behind."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderBusy(f"{folder}: in use by {_holder(folder)}; wait for it to end or choose another --out") from None
    holder = folder / HOLDER_NAME
    try:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}), encoding="utf-8")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
        if created and {entry.name for entry in folder.iterdir()} <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()


def _holder(folder: Path) -> str:
    try:
        info = json.loads((folder / HOLDER_NAME).read_text(encoding="utf-8"))
        return f"process {info['pid']} on {info['host']} (started {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"
