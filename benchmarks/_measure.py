"""Measurement helpers shared by the step benchmarks: fresh worker processes, CPU-time medians, peak RSS."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# glibc allocator settings of DESIGN §10; they only take effect when set before Python starts
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_WAIT_POLICY": "PASSIVE"}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def available_gb() -> float:
    """Memory the kernel could hand out now without swapping (MemAvailable)."""
    for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return float("inf")


def timed_steps(steppers: Mapping[str, Callable[[], object]], steps: int, warmup: int = 1) -> dict[str, dict]:
    """Run warm-up rounds then `steps` measured rounds, calling every stepper once per round.

    Within a round the steppers alternate, so all of them see the same load from other jobs.
    CPU time is the process's CPU seconds (all threads).
    """
    times: dict[str, list[float]] = {name: [] for name in steppers}
    cpu_times: dict[str, list[float]] = {name: [] for name in steppers}
    for round_index in range(warmup + steps):  # warm-up rounds settle the allocator and kernels
        for name, run_step in steppers.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            run_step()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "times_s": times[name],
            "median_cpu_s": statistics.median(cpu_times[name]),
            "cpu_times_s": cpu_times[name],
        }
        for name in steppers
    }


# how an allocation refused under the data limit ends a worker: Python's MemoryError, torch's CPU allocator, C++
OUT_OF_MEMORY_SIGNS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "std::bad_alloc")


class WorkerOutOfMemory(RuntimeError):
    """A worker ran out of the memory its data limit allowed (a clean failure, not the kernel's OOM killer)."""


def _limit_data(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))

    return apply


def run_worker(script: str, arguments: list[str], extra_env: Mapping[str, str] | None = None, memory_limit_gb: float | None = None) -> dict:
    """Run `script` with `arguments` in a fresh Python process (allocator settings applied) and return the
    JSON object it prints on its last stdout line.

    `memory_limit_gb` caps the worker's data segment (RLIMIT_DATA: heap and private anonymous mappings, which is
    where every tensor lives), so a step larger than the limit fails inside the worker, raising
    WorkerOutOfMemory here, instead of driving the machine into the kernel's OOM killer, which may pick
    another user's process.
    """
    env = {**os.environ, **ALLOCATOR_ENV, **(extra_env or {})}
    limit = None if memory_limit_gb is None else _limit_data(int(memory_limit_gb * 1024**3))
    done = subprocess.run([sys.executable, script, *arguments], env=env, capture_output=True, text=True, encoding="utf-8", preexec_fn=limit)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
        message = f"{Path(script).name} {' '.join(arguments)} failed: {tail[0]}"
        if memory_limit_gb is not None and any(sign in done.stderr for sign in OUT_OF_MEMORY_SIGNS):
            raise WorkerOutOfMemory(message)
        raise RuntimeError(message)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_results(results: Path, report: str, figures: Mapping) -> None:
    """Write the Markdown `report` to `results` and the raw `figures` beside it (same name, .json), so a later run
    can add to them."""
    raw = results.with_suffix(".json")
    results.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(figures, indent=1), encoding="utf-8")
    results.write_text(report, encoding="utf-8")
    print(f"wrote {results} and {raw}")
