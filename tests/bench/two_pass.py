"""Benchmark: a loss over log-probabilities in two passes against direct autograd, on TinyCausalLM.

- time: `forward_backward_custom(two_pass=True)` against `two_pass=False` on one batch, the median
  of the per-rep ratios, interleaved in one process (target: at most 1.6; two passes cost about one
  extra forward pass without a graph);
- memory: two passes in micro-batches of `--micro` sequences against direct autograd, on a batch of
  8x that many sequences, each measured in a fresh process: peak resident memory during the step
  minus what the process held once the model and batch existed (target: at most 0.35).

The loss is `make_variance_loss`, which couples every sequence of the batch.

    python tests/bench/two_pass.py [--reps 5] [--threads 2] [--micro 8]
"""

import argparse
import statistics
import sys

from measure import measure

CHILD = r"""
import json, sys, time
import torch
from measure import peak_rss_kb, rss_kb
from minilearn import DataLoaders, Learner
from minilearn.losses import make_variance_loss
from minilearn.demo.tiny_model import TinyCausalLM

mode, n_seqs, micro, seq_len, threads, reps = sys.argv[1], *map(int, sys.argv[2:7])
torch.set_num_threads(threads)
torch.manual_seed(0)
learn = Learner(TinyCausalLM(512, dim=64, n_layers=4, n_heads=4, max_len=seq_len), DataLoaders([], []))
batch = {"input_ids": torch.randint(0, 512, (n_seqs, seq_len))}
fn = make_variance_loss(0.5)


def step(two_pass, micro_batch_size=None):
    out = learn.forward_backward_custom(batch, fn, two_pass=two_pass, micro_batch_size=micro_batch_size)
    learn.model.zero_grad(set_to_none=False)  # the gradient buffers stay allocated: both methods need them
    return out.loss


if mode == "time":
    step(False); step(True)  # warm-up
    ratios = []
    for _ in range(reps):
        t0 = time.perf_counter(); step(False); direct = time.perf_counter() - t0
        t0 = time.perf_counter(); step(True); two = time.perf_counter() - t0
        ratios.append(two / direct)
    print(json.dumps({"ratios": ratios, "direct_s": direct, "two_pass_s": two}))
else:
    for p in learn.model.parameters():
        p.grad = torch.zeros_like(p)
    base = rss_kb()
    loss = step(mode == "two_pass", micro if mode == "two_pass" else None)
    print(json.dumps({"extra_mb": (peak_rss_kb() - base) / 1024, "loss": loss}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--micro", type=int, default=8, help="sequences a micro-batch; the memory batch is 8x this")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--time-batch", type=int, default=16, help="sequences in the timed batch")
    args = p.parse_args()
    print(f"TinyCausalLM(V=512, dim=64, 4 layers, 4 heads), T={args.seq_len}, make_variance_loss, "
          f"torch threads={args.threads}")
    t = measure(CHILD, "time", args.time_batch, 0, args.seq_len, args.threads, args.reps, threads=args.threads)
    print(f"time, batch {args.time_batch}: direct {t['direct_s']:.3f} s, two-pass {t['two_pass_s']:.3f} s (last rep); "
          f"ratios {', '.join(f'{r:.3f}' for r in t['ratios'])}")
    print(f"two-pass vs direct time: median ratio {statistics.median(t['ratios']):.3f} (target <= 1.6)")
    n = 8 * args.micro
    mem = {mode: measure(CHILD, mode, n, args.micro, args.seq_len, args.threads, 1, threads=args.threads)
           for mode in ("direct", "two_pass")}
    assert abs(mem["direct"]["loss"] - mem["two_pass"]["loss"]) <= 1e-4 * abs(mem["direct"]["loss"]), mem
    for mode, r in mem.items():
        print(f"memory, batch {n}: {mode:>8} peak extra {r['extra_mb']:.0f} MB, loss {r['loss']:.5f}")
    ratio = mem["two_pass"]["extra_mb"] / mem["direct"]["extra_mb"]
    print(f"two-pass (micro-batches of {args.micro}) vs direct, batch {n}: peak extra memory ratio {ratio:.3f} "
          f"(target <= 0.35)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
