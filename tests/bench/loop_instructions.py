"""Benchmark: minilearn's loop overhead counted in CPU instructions, which a shared machine cannot blur.

What it measures
    The work of `loop_overhead.py`'s MLP setups (an MLP 32-32-10, batch size 32, SGD, one torch
    thread; a raw hand-written loop against a Learner doing the same work: TrainCB alone, with
    MetricsCB, with a validation pass, ProgressCB into a file, AccelerateCB), counted by valgrind's
    callgrind instead of timed. Each loop runs one epoch of 100 and of 300 training
    batches in its own process (after an untimed warm-up epoch); the difference of the two counts,
    divided by 200, is the cost of one training batch, free of start-up and per-fit costs. The
    ratio minilearn/raw of those per-batch counts is the loop's overhead. Python's hash seed is fixed
    (PYTHONHASHSEED=0), because dict probing, and so the count, depends on it.

    Wall-clock ratios (`loop_overhead.py`) are what a user feels, but on a machine whose speed drifts
    from one second to the next they scatter by +-30%; instruction counts repeat to a few parts in
    ten thousand, so they can show a change of 1%.

How to run it (by hand, from the repository root; needs `valgrind`, e.g. `apt install valgrind`)
    python tests/bench/loop_instructions.py                    # about 15 minutes on 2 cores
    python tests/bench/loop_instructions.py --setups metrics   # one setup

It exits with status 1 when valgrind is missing or a run fails, and 0 otherwise (it reports, it
does not gate).
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads, as in loop_overhead.py

import argparse
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SIZES = (100, 300)  # training batches per measured epoch
N_VALID_BATCHES = 10
TARGET = 1.05
# The MLP setups of loop_overhead.py (its GPT-2 setup does too much work a batch for valgrind's pace).
DEFAULT_SETUPS = ("train", "metrics", "metrics+valid", "progress", "accelerate")


def child(setup_name: str, mode: str, n_batches: int) -> None:
    """One warm-up epoch, then the measured one (valgrind counts the whole process; the parent
    takes the difference between two sizes)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import loop_overhead as bench

    torch.set_num_threads(1)
    setup = bench.SETUPS[setup_name]
    data = bench.make_data(n_batches * bench.BATCH_SIZE, N_VALID_BATCHES * bench.BATCH_SIZE)
    make_run = bench.setup_raw if mode == "raw" else bench.setup_minilearn
    with open(os.devnull, "w") as out:
        run = make_run(setup, setup.make_model(), *bench.make_loaders(*data), out if setup.to_file else None)
        run()  # warm-up: lazy initialisation, allocator growth
        run()


def count(setup: str, mode: str, n_batches: int) -> int:
    """Instructions executed by a child process running `mode` of `setup` for `n_batches` training batches."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
           "--child", setup, mode, str(n_batches)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    found = re.search(r"Collected : (\d+)", res.stderr)
    if res.returncode != 0 or not found:
        raise RuntimeError(f"{setup} {mode} {n_batches}: valgrind run failed:\n{res.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("SETUP", "MODE", "BATCHES"), help=argparse.SUPPRESS)
    parser.add_argument("--setups", nargs="+", default=list(DEFAULT_SETUPS),
                        help=f"setups of loop_overhead.py (default {' '.join(DEFAULT_SETUPS)})")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt install valgrind)", file=sys.stderr)
        return 1
    jobs = [(setup, mode, n) for setup in args.setups for mode in ("raw", "minilearn") for n in SIZES]
    with ThreadPoolExecutor(max_workers=2) as pool:  # each valgrind run is single-threaded
        counts = dict(zip(jobs, pool.map(lambda job: count(*job), jobs)))
    print(f"instructions per training batch (threads=1, PYTHONHASHSEED=0; target <= {TARGET}):")
    for setup in args.setups:
        per_batch = {mode: (counts[setup, mode, SIZES[1]] - counts[setup, mode, SIZES[0]]) / (SIZES[1] - SIZES[0])
                     for mode in ("raw", "minilearn")}
        print(f"{setup:<14} ratio {per_batch['minilearn'] / per_batch['raw']:.4f}  raw {per_batch['raw']:,.0f}, "
              f"minilearn {per_batch['minilearn']:,.0f} (overhead {per_batch['minilearn'] - per_batch['raw']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
