"""Benchmark: what minilearn's callback loop costs next to a hand-written PyTorch loop.

What it measures
    One epoch of a tiny MLP (Linear(32, 32), ReLU, Linear(32, 10)) on random 10-class data, batch
    size 32, SGD, on one CPU thread, run by a hand-written loop ("raw") and by a Learner doing the
    same work, for each of these setups:

    - ``train``:          a training pass; raw: forward, F.cross_entropy, backward, step, zero_grad;
                          minilearn: ``Learner(...).fit(1, valid=False)`` (TrainCB alone);
    - ``metrics``:        the same with MetricsCB; raw adds the same metric work (a batch-size-weighted
                          sum of the loss kept on the device, read once at the end of the pass);
    - ``metrics+valid``:  a training and a validation pass, both with the metric work;
    - ``progress``:       ``metrics+valid`` with ProgressCB, printing into a file (as when a script's
                          output is piped to a log); raw prints its two lines into the same file;
    - ``accelerate``:     ``metrics+valid`` with AccelerateCB in one process, no mixed precision;
    - ``gpt2``:           dict batches (``input_ids``, ``attention_mask``, ``target_tokens``) into a
                          2-layer GPT-2 made from a config (dropout 0, so the two loops can agree bit for
                          bit), loss ``WeightedCrossEntropy`` through LossCB, MetricsCB, both passes; raw
                          calls the same model and loss function by hand.

    In each setup both loops start from the same weights and read the same batches in the same order,
    so they must end with bit-identical weights and the same epoch losses; the script checks it. The
    runs are interleaved (raw, minilearn, raw, minilearn, ...) after an untimed warm-up, so that drift
    in the machine's speed hits both alike, and the median of the per-pair ratios minilearn/raw is
    reported against the design target of 1.05 (DESIGN.md, section Performance).

How to run it (by hand, from the repository root; it is not a pytest test)
    python tests/bench/loop_overhead.py                           # every setup, 5 repetitions
    python tests/bench/loop_overhead.py --setups train metrics --reps 11 --samples 50000

It exits with status 1 when the final weights differ (the comparison would be meaningless), and
with status 0 otherwise, also when a ratio is above target: it reports, it does not gate.
"""

import os

# Must be set before torch is imported: the OpenMP pool is sized when torch loads, and a multi-thread
# pool makes timings of tiny matmuls noisy and not comparable between machines.
os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import contextlib
import copy
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from minilearn import DataLoaders, Learner
from minilearn.callbacks import AccelerateCB, LossCB, MetricsCB, ProgressCB
from minilearn.losses import WeightedCrossEntropy, weighted_cross_entropy

N_IN, N_HIDDEN, N_CLASSES = 32, 32, 10
BATCH_SIZE = 32
N_VALID = 4_000
LR = 0.1
SEED = 42
TARGET = 1.05
GPT2_VOCAB, GPT2_LENGTH, GPT2_BATCH = 64, 32, 8


def make_data(n_train: int, n_valid: int) -> tuple[TensorDataset, TensorDataset]:
    """Random inputs and labels: the content does not matter, only the amount of work per batch."""
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(n_train + n_valid, N_IN, generator=g)
    y = torch.randint(0, N_CLASSES, (n_train + n_valid,), generator=g)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def make_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Linear(N_IN, N_HIDDEN), torch.nn.ReLU(), torch.nn.Linear(N_HIDDEN, N_CLASSES))


def make_token_data(n_train: int, n_valid: int) -> tuple[list[dict], list[dict]]:
    """Padded token rows as a Hugging Face collator gives them: ids, a mask, and -100 targets on padding."""
    g = torch.Generator().manual_seed(SEED)
    rows = []
    for _ in range(n_train + n_valid):
        ids = torch.randint(0, GPT2_VOCAB, (GPT2_LENGTH,), generator=g)
        mask = (torch.arange(GPT2_LENGTH) < torch.randint(GPT2_LENGTH // 2, GPT2_LENGTH + 1, (), generator=g)).long()
        targets = torch.where(mask.bool(), ids.roll(-1), -100)
        rows.append({"input_ids": ids, "attention_mask": mask, "target_tokens": targets})
    return rows[:n_train], rows[n_train:]


def make_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(SEED)
    config = GPT2Config(vocab_size=GPT2_VOCAB, n_positions=GPT2_LENGTH, n_embd=32, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def make_loaders(train_ds, valid_ds, batch_size: int = BATCH_SIZE) -> tuple[DataLoader, DataLoader]:
    """Fresh loaders for each run; the training loader's generator is re-seeded so that every run,
    raw or minilearn, sees the same shuffled order (and so can end with identical weights)."""
    shuffle_gen = torch.Generator().manual_seed(SEED)
    return (DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=shuffle_gen),
            DataLoader(valid_ds, batch_size=batch_size, shuffle=False))


# ---- the hand-written loops ----------------------------------------------------------------------

def mlp_step(model, batch):
    xb, yb = batch
    return F.cross_entropy(model(xb), yb), xb.shape[0]


def gpt2_step(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return weighted_cross_entropy(logits, batch["target_tokens"]), batch["input_ids"].shape[0]


def raw_epoch(model, train_dl, valid_dl, step=mlp_step, valid=True, metrics=True, out=None) -> dict[str, float]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)  # the Learner also builds its optimizer inside fit
    losses = {}
    for phase, dl, training in (("train", train_dl, True), ("valid", valid_dl, False))[:2 if valid else 1]:
        model.train(training)
        sums = None
        with torch.set_grad_enabled(training):  # validation runs without autograd, as in the Learner
            for batch in dl:
                loss, bs = step(model, batch)
                if metrics:
                    # What MetricsCB keeps: running sums that stay tensors (no .item() per batch, so no
                    # synchronisation), read once at the end of the pass: a loss with a denominator adds
                    # up its totals and denominators, any other loss its batch-size-weighted values.
                    parts = (loss.total, loss.denominator, 1) if hasattr(loss, "denominator") else (loss, bs, bs)
                    if sums is None:
                        sums = [parts[0].detach().float() * parts[2], torch.as_tensor(parts[1]).float()]
                    else:
                        sums[0].add_(parts[0].detach(), alpha=parts[2])
                        sums[1].add_(parts[1])
                if training:
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
        if metrics:
            losses[phase] = sums[0].item() / sums[1].item()
            if out is not None:
                print(f"{phase} {losses[phase]:.4f}", file=out, flush=True)
    return losses


# ---- the setups ------------------------------------------------------------------------------------

@dataclass
class Setup:
    """One comparison: how to make the model and data, and the raw and minilearn epochs over them."""
    make_model: Callable
    make_data: Callable
    raw: Callable  # (model, train_dl, valid_dl, out) -> losses
    cbs: Callable  # () -> callbacks of the Learner
    loss_func: Callable | None = F.cross_entropy
    valid: bool = True
    batch_size: int = BATCH_SIZE
    to_file: bool = False  # both loops print into a file


SETUPS = {
    "train": Setup(make_model, make_data, lambda m, t, v, out: raw_epoch(m, t, v, valid=False, metrics=False),
                   lambda: [], valid=False),
    "metrics": Setup(make_model, make_data, lambda m, t, v, out: raw_epoch(m, t, v, valid=False),
                     lambda: [MetricsCB()], valid=False),
    "metrics+valid": Setup(make_model, make_data, lambda m, t, v, out: raw_epoch(m, t, v), lambda: [MetricsCB()]),
    "progress": Setup(make_model, make_data, lambda m, t, v, out: raw_epoch(m, t, v, out=out),
                      lambda: [MetricsCB(), ProgressCB()], to_file=True),
    "accelerate": Setup(make_model, make_data, lambda m, t, v, out: raw_epoch(m, t, v),
                        lambda: [MetricsCB(), AccelerateCB()]),
    "gpt2": Setup(make_gpt2, make_token_data, lambda m, t, v, out: raw_epoch(m, t, v, step=gpt2_step),
                  lambda: [LossCB(WeightedCrossEntropy()), MetricsCB()], loss_func=None, batch_size=GPT2_BATCH),
}


def setup_raw(setup: Setup, model, train_dl, valid_dl, out):
    """The hand-written epoch as a closure, like `setup_minilearn`."""
    return lambda: setup.raw(model, train_dl, valid_dl, out)


def setup_minilearn(setup: Setup, model, train_dl, valid_dl, out):
    """The same epoch through minilearn, as a closure: the Learner and its callbacks are built before
    the clock starts, and only `learn.fit(1)` (which also builds the optimizer) is timed."""
    cbs = setup.cbs()
    learn = Learner(model, DataLoaders(train_dl, valid_dl), setup.loss_func, lr=LR, opt_func=torch.optim.SGD, cbs=cbs)
    metrics = next((cb for cb in cbs if isinstance(cb, MetricsCB)), None)

    def run() -> dict[str, float]:
        with contextlib.redirect_stdout(out) if out is not None else contextlib.nullcontext():
            learn.fit(1, valid=setup.valid)
        return {row["phase"]: row["loss"] for row in metrics.history} if metrics else {}
    return run


def timed(setup: Setup, make_run, init_state: dict, data, out):
    """Run one epoch from `init_state`; return (wall seconds, CPU seconds, final weights, epoch losses).
    Model copy, loader creation and building the run happen before the clock starts."""
    model = setup.make_model()
    model.load_state_dict(copy.deepcopy(init_state))
    run = make_run(setup, model, *make_loaders(*data, batch_size=setup.batch_size), out)
    gc.collect()  # start both loops from the same heap state, so neither inherits the other's garbage
    t0, c0 = time.perf_counter(), time.thread_time()
    losses = run()
    # Wall time is the headline. This thread's CPU time is a second view: with one torch thread and
    # num_workers=0 all the work runs here, and it is less disturbed by other processes.
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return wall, cpu, {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def compare(name: str, setup: Setup, reps: int, samples: int) -> tuple[float, float, float] | None:
    """Time minilearn against raw for one setup, interleaved; returns the median ratio, the median raw
    and minilearn seconds, or None when the two loops did not end with the same weights."""
    n_valid = N_VALID if setup.make_data is make_data else N_VALID // 16
    data = setup.make_data(samples if setup.make_data is make_data else samples // 20, n_valid)
    init_state = copy.deepcopy(setup.make_model().state_dict())
    with tempfile.TemporaryFile("w+") as log:
        out = log if setup.to_file else None
        # Warm-up (untimed): first calls pay for lazy initialisation and allocator growth. It also gives
        # the correctness check: both loops from the same start must end identical.
        _, _, w_raw, loss_raw = timed(setup, setup_raw, init_state, data, out)
        _, _, w_ml, loss_ml = timed(setup, setup_minilearn, init_state, data, out)
        if not same_weights(w_raw, w_ml) or loss_raw != loss_ml:
            print(f"{name}: the two loops did not do the same work (weights equal: {same_weights(w_raw, w_ml)}, "
                  f"losses raw {loss_raw} minilearn {loss_ml}); timings would not be comparable", file=sys.stderr)
            return None
        walls, cpus = [], []
        for _ in range(reps):
            raw = timed(setup, setup_raw, init_state, data, out)
            ml = timed(setup, setup_minilearn, init_state, data, out)
            assert same_weights(raw[2], w_raw) and same_weights(ml[2], w_raw), "runs are not deterministic"
            walls.append((raw[0], ml[0]))
            cpus.append((raw[1], ml[1]))
    ratio = statistics.median(b / a for a, b in walls)  # each pair ran back to back: its ratio cancels drift
    cpu_ratio = statistics.median(b / a for a, b in cpus)
    pair_ratios = sorted(b / a for a, b in walls)
    raw_med, ml_med = statistics.median(a for a, _ in walls), statistics.median(b for _, b in walls)
    print(f"{name:<14} median ratio {ratio:.3f}  (cpu time {cpu_ratio:.3f}; pairs {pair_ratios[0]:.3f}..{pair_ratios[-1]:.3f}; "
          f"raw {raw_med:.3f} s, minilearn {ml_med:.3f} s; same weights and epoch losses)", flush=True)
    return ratio, raw_med, ml_med


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each loop (default 5)")
    parser.add_argument("--samples", type=int, default=20_000, help="training samples of the MLP (default 20000; "
                        "the GPT-2 setup takes a twentieth as many rows)")
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    args = parser.parse_args()

    torch.set_num_threads(1)  # also pins intra-op threads for any library that ignores OMP_NUM_THREADS
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, MLP: {args.samples} train + {N_VALID} valid "
          f"samples in batches of {BATCH_SIZE}; {args.reps} interleaved reps; target <= {TARGET}")
    results = {name: compare(name, SETUPS[name], args.reps, args.samples) for name in args.setups}
    return 1 if any(r is None for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
