"""Benchmark: what minilearn's callback loop costs next to a hand-written PyTorch loop.

What it measures
    One epoch (a training pass, then a validation pass) of a tiny MLP (Linear(32, 32), ReLU,
    Linear(32, 10)) on random 10-class data, batch size 32, SGD, on one CPU thread, done twice:

    - raw:       a hand-written loop: forward, F.cross_entropy, backward, step, zero_grad, plus the
                 same metric work MetricsCB does (a batch-size-weighted average of the loss per
                 epoch phase, summed on the device and read once at the end of the phase);
    - minilearn: ``Learner(model, dls, F.cross_entropy, opt_func=SGD, cbs=[MetricsCB()]).fit(1)``
                 (TrainCB is added by default).

    Both start from the same initial weights and read the same batches in the same order (one
    DataLoader over a TensorDataset, shuffled by a generator seeded the same way), so they must end
    with bit-identical weights and the same epoch losses; the script checks and prints this.
    The runs are interleaved (raw, minilearn, raw, minilearn, ...) after an untimed warm-up so that
    drift in the machine's speed hits both alike, and the median ratio minilearn/raw is reported
    against the design target of 1.05 (DESIGN.md, section Performance).

How to run it (by hand, from the repository root; it is not a pytest test)
    python tests/bench/loop_overhead.py                 # 7 repetitions, 20,000 training samples
    python tests/bench/loop_overhead.py --reps 11 --samples 50000

It exits with status 1 when the final weights differ (the comparison would be meaningless), and
with status 0 otherwise, also when the ratio is above target: it reports, it does not gate.
"""

import os

# Must be set before torch is imported: the OpenMP pool is sized when torch loads, and a multi-thread
# pool makes timings of tiny matmuls noisy and not comparable between machines.
os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import copy
import gc
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from minilearn import DataLoaders, Learner
from minilearn.callbacks import MetricsCB

N_IN, N_HIDDEN, N_CLASSES = 32, 32, 10
BATCH_SIZE = 32
N_VALID = 4_000
LR = 0.1
SEED = 42
TARGET = 1.05


def make_data(n_train: int, n_valid: int) -> tuple[TensorDataset, TensorDataset]:
    """Random inputs and labels: the content does not matter, only the amount of work per batch."""
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(n_train + n_valid, N_IN, generator=g)
    y = torch.randint(0, N_CLASSES, (n_train + n_valid,), generator=g)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def make_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(N_IN, N_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(N_HIDDEN, N_CLASSES))


def make_loaders(train_ds: TensorDataset, valid_ds: TensorDataset) -> tuple[DataLoader, DataLoader]:
    """Fresh loaders for each run; the training loader's generator is re-seeded so that every run,
    raw or minilearn, sees the same shuffled order (and so can end with identical weights)."""
    shuffle_gen = torch.Generator().manual_seed(SEED)
    train_dl = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True, generator=shuffle_gen)
    valid_dl = DataLoader(valid_ds, batch_size=BATCH_SIZE, shuffle=False)
    return train_dl, valid_dl


def setup_raw(model: torch.nn.Module, train_dl: DataLoader, valid_dl: DataLoader):
    """One epoch by hand, doing the same work as TrainCB + MetricsCB, in the same order.
    Returns the timed part as a closure, like `setup_minilearn`."""
    return lambda: raw_epoch(model, train_dl, valid_dl)


def raw_epoch(model: torch.nn.Module, train_dl: DataLoader, valid_dl: DataLoader) -> dict[str, float]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # the Learner also builds its optimizer inside fit
    losses = {}
    for phase, dl, training in (("train", train_dl, True), ("valid", valid_dl, False)):
        model.train(training)
        loss_sum, count = None, 0
        with torch.set_grad_enabled(training):  # validation runs without autograd, as in the Learner
            for xb, yb in dl:
                loss = F.cross_entropy(model(xb), yb)
                # The metric MetricsCB keeps: a batch-size-weighted running sum that stays a tensor
                # (no .item() per batch, so no synchronisation), read once at the end of the phase.
                bs = xb.shape[0]
                count += bs
                if loss_sum is None:
                    loss_sum = loss.detach().float() * bs
                else:
                    loss_sum.add_(loss.detach(), alpha=bs)
                if training:
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
        losses[phase] = float(loss_sum) / count
    return losses


def setup_minilearn(model: torch.nn.Module, train_dl: DataLoader, valid_dl: DataLoader):
    """The same epoch through minilearn. Returns the timed part as a closure: the Learner is built
    before the clock starts, and only `learn.fit(1)` (which also builds the optimizer) is timed."""
    metrics = MetricsCB()
    learn = Learner(model, DataLoaders(train_dl, valid_dl), F.cross_entropy, lr=LR, opt_func=torch.optim.SGD,
                    cbs=[metrics])

    def run() -> dict[str, float]:
        learn.fit(1)
        return {row["phase"]: row["loss"] for row in metrics.history}
    return run


def timed(setup, init_state: dict, train_ds: TensorDataset, valid_ds: TensorDataset):
    """Run one epoch from `init_state`; return (wall seconds, CPU seconds, final weights, epoch losses).
    Model copy, loader creation and `setup` happen before the clock starts: only the epoch is timed."""
    model = make_model()
    model.load_state_dict(copy.deepcopy(init_state))
    train_dl, valid_dl = make_loaders(train_ds, valid_ds)
    run = setup(model, train_dl, valid_dl)
    gc.collect()  # start both loops from the same heap state, so neither inherits the other's garbage
    t0, c0 = time.perf_counter(), time.thread_time()
    losses = run()
    # Wall time is the headline. This thread's CPU time is a second view: with one torch thread and
    # num_workers=0 all the work runs here, and CPU time is much less disturbed by other processes
    # on a shared machine (it still sees their effect on caches and clock speed).
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return wall, cpu, {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def compare(name_a: str, setup_a, name_b: str, setup_b, reps: int, init_state: dict, train_ds: TensorDataset,
            valid_ds: TensorDataset, n_batches: int, expected: dict) -> tuple[float, float, float]:
    """Time `setup_b` against `setup_a`, interleaved, printing each pair; returns the median ratio b/a
    and the median times of a and b."""
    # Interleaved so that slow drift (thermal, other processes) affects both series about equally.
    times_a, times_b, cpu_a, cpu_b = [], [], [], []
    for rep in range(reps):
        t_a, c_a, w_a, _ = timed(setup_a, init_state, train_ds, valid_ds)
        t_b, c_b, w_b, _ = timed(setup_b, init_state, train_ds, valid_ds)
        assert same_weights(w_a, expected) and same_weights(w_b, expected), "runs are not deterministic"
        times_a.append(t_a); times_b.append(t_b)
        cpu_a.append(c_a); cpu_b.append(c_b)
        print(f"rep {rep + 1}: {name_a} {t_a:.4f} s  {name_b} {t_b:.4f} s  ratio {t_b / t_a:.3f}   "
              f"(cpu: {name_a} {c_a:.4f} s  {name_b} {c_b:.4f} s  ratio {c_b / c_a:.3f})")

    # The median of per-pair ratios: each pair ran back to back, so their ratio cancels most drift.
    ratios = [b / a for a, b in zip(times_a, times_b)]
    cpu_ratio = statistics.median(b / a for a, b in zip(cpu_a, cpu_b))
    med_a, med_b = statistics.median(times_a), statistics.median(times_b)
    per_batch_us = (med_b - med_a) / n_batches * 1e6
    cpu_per_batch_us = (statistics.median(cpu_b) - statistics.median(cpu_a)) / n_batches * 1e6
    print(f"overhead per batch (difference of medians): wall {per_batch_us:.1f} us, cpu {cpu_per_batch_us:.1f} us "
          f"over {n_batches} batches; cpu-time median ratio {cpu_ratio:.3f}; "
          f"{name_a} median {med_a:.4f} s, {name_b} median {med_b:.4f} s")
    if max(ratios) - min(ratios) > 0.2:  # pairs disagree by more than the effect we want to see
        print(f"note: per-pair ratios range {min(ratios):.3f}..{max(ratios):.3f}; the machine is noisy "
              f"(other processes?), use more --reps or a quiet machine")
    return statistics.median(ratios), med_a, med_b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions of each loop (default 7)")
    parser.add_argument("--samples", type=int, default=20_000, help="training samples (default 20000)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # also pins intra-op threads for any library that ignores OMP_NUM_THREADS
    train_ds, valid_ds = make_data(args.samples, N_VALID)
    init_state = copy.deepcopy(make_model().state_dict())
    n_batches = -(-args.samples // BATCH_SIZE) + -(-N_VALID // BATCH_SIZE)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, {args.samples} train + {N_VALID} valid "
          f"samples, batch size {BATCH_SIZE}, {n_batches} batches per epoch, {args.reps} reps")

    # Warm-up (untimed): first calls pay for lazy initialisation, allocator growth and import-time work.
    # It also gives the correctness check: both loops from the same start must end identical.
    _, _, w_raw, loss_raw = timed(setup_raw, init_state, train_ds, valid_ds)
    _, _, w_ml, loss_ml = timed(setup_minilearn, init_state, train_ds, valid_ds)
    weights_equal = same_weights(w_raw, w_ml)
    losses_equal = loss_raw == loss_ml
    print(f"same final weights (torch.equal): {weights_equal}")
    print(f"same epoch losses: {losses_equal}  raw {loss_raw}  minilearn {loss_ml}")
    if not weights_equal:
        print("the two loops did not do the same work; timings would not be comparable", file=sys.stderr)
        return 1

    ratio, raw_med, ml_med = compare("raw", setup_raw, "minilearn", setup_minilearn, args.reps, init_state, train_ds,
                                     valid_ds, n_batches, w_raw)
    print(f"loop overhead: median ratio {ratio:.3f} (target <= {TARGET}); raw median {raw_med:.4f} s, "
          f"minilearn median {ml_med:.4f} s; threads={torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
