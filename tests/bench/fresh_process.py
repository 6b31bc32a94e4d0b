"""Measuring in a fresh Python process, so one method's allocator state cannot flatter another:
`run_fresh` runs a child script and reads the JSON line it prints last; the child measures its peak
extra resident memory with `rss_kb` (now) and `peak_rss_kb` (the process's peak so far)."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path


def rss_kb() -> int:
    """The current resident set in KiB, from /proc (ru_maxrss only gives the peak)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kb() -> int:
    """The peak resident set of this process so far, in KiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_fresh(code: str, args: list, threads: int) -> dict:
    """Run `code` as `python -c code *args` with `threads` OpenMP threads and this folder importable;
    return the JSON object it printed on its last line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
