"""The reward curve of nbs/07_rl_end_to_end.ipynb in its default setting, with the wall time: runs the
notebook top to bottom in a fresh kernel (2 threads, as the notebook sets) and prints what its cells
printed. The figures of the RL guide (docs/guides/rl.md) come from this.

Usage: OMP_NUM_THREADS=2 python tests/bench/rl_curve.py
"""

import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "nbs" / "07_rl_end_to_end.ipynb"


def main():
    os.environ.pop("MINILEARN_SMALL", None)  # the default run, not the test suite's short one
    os.environ.setdefault("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                   ).execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("name") == "stdout":
                print(out["text"], end="")
    print(f"whole notebook, from a fresh kernel: {seconds:.0f} s")


if __name__ == "__main__":
    main()
