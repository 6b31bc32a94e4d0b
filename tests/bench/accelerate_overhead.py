"""Benchmark: what AccelerateCB costs next to the plain Learner, on the loop-overhead workload.

One epoch (train + valid) of the tiny MLP of `loop_overhead.py` (32-32-10, batch 32, SGD, one CPU
thread), run by `Learner(..., cbs=[MetricsCB()])` with and without `AccelerateCB()` (one process, no
mixed precision), interleaved after a warm-up; the two must end with identical weights. Prints the
median ratio against the target of 1.10.

    python tests/bench/accelerate_overhead.py [--reps 7] [--samples 20000]
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch loads: see loop_overhead.py

import argparse
import sys

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from loop_overhead import BATCH_SIZE, LR, N_VALID, compare, make_data, make_model, same_weights, setup_minilearn, timed
from minilearn import DataLoaders, Learner
from minilearn.callbacks import AccelerateCB, MetricsCB

TARGET = 1.10


def setup_accelerate(model: torch.nn.Module, train_dl: DataLoader, valid_dl: DataLoader):
    """The plain Learner's epoch with AccelerateCB added; building the callback (and its Accelerator)
    is not timed, preparing the model, optimizer and loaders inside `fit` is."""
    metrics = MetricsCB()
    learn = Learner(model, DataLoaders(train_dl, valid_dl), F.cross_entropy, lr=LR, opt_func=torch.optim.SGD,
                    cbs=[metrics, AccelerateCB()])

    def run() -> dict[str, float]:
        learn.fit(1)
        return {row["phase"]: row["loss"] for row in metrics.history}
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_ds, valid_ds = make_data(args.samples, N_VALID)
    init_state = make_model().state_dict()
    n_batches = -(-args.samples // BATCH_SIZE) + -(-N_VALID // BATCH_SIZE)
    _, _, w_plain, _ = timed(setup_minilearn, init_state, train_ds, valid_ds)
    _, _, w_acc, _ = timed(setup_accelerate, init_state, train_ds, valid_ds)
    print(f"same final weights (torch.equal): {same_weights(w_plain, w_acc)}")
    if not same_weights(w_plain, w_acc):
        return 1
    ratio, plain_med, acc_med = compare("learner", setup_minilearn, "accelerate", setup_accelerate, args.reps,
                                        init_state, train_ds, valid_ds, n_batches, w_plain)
    print(f"accelerate overhead: median ratio {ratio:.3f} (target <= {TARGET}); learner median {plain_med:.4f} s, "
          f"accelerate median {acc_med:.4f} s; threads={torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
