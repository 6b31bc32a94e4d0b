"""Shared by the benchmarks: run one measurement in a fresh Python process and read back its result,
and read a process's memory.

A fresh process for each measurement, so that one method's allocator state (memory already mapped,
caches warmed) cannot flatter or penalise the other. A child script is Python source run with
`python -c`; it can `from measure import rss_kb, ...` (this folder is put on its path), and prints
its result as one JSON line, last.
"""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

__all__ = ["measure", "rss_kb", "peak_rss_kb", "memory_mb", "peak_memory_mb"]

BENCH_DIR = Path(__file__).resolve().parent


def rss_kb() -> int:
    """The current resident set of this process in KiB, from /proc (ru_maxrss only gives the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kb() -> int:
    """The peak resident set of this process so far, in KiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_mb(device: str) -> float:
    """Memory in use now, MiB: the process's resident set on CPU, allocated tensors on CUDA (whose
    peak counter this resets, so `peak_memory_mb` measures from here)."""
    if device == "cpu":
        return rss_kb() / 1024
    import torch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / 2**20


def peak_memory_mb(device: str) -> float:
    """The peak of what `memory_mb` measures, MiB."""
    if device == "cpu":
        return peak_rss_kb() / 1024
    import torch
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def measure(child: str, *args: object, threads: int) -> dict:
    """Run the Python source `child` in a fresh process with `args` as its `sys.argv[1:]` and
    `OMP_NUM_THREADS=threads`; return the JSON object on the last line it prints."""
    path = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", child, *map(str, args)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the measurement {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
