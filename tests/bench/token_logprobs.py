"""Benchmark: peak extra memory and time of `token_logprobs` against the naive
`log_softmax(logits).gather(...)`, forward and backward, at N=4096 tokens and V=128,256.

Each measurement runs in a fresh subprocess, so one method's allocator state cannot flatter the
other. Peak extra memory is the process's peak resident memory during forward + backward, minus
what it held once the inputs (float32 logits that need a gradient, and targets) existed; the
gradient of the logits, which both methods must produce, counts for both. Targets (DESIGN.md /
issue): memory ratio at most 0.5, time ratio at most 1.0.

    python tests/bench/token_logprobs.py [--tokens 4096] [--vocab 128256] [--reps 3] [--threads 2]
"""

import argparse
import statistics
import sys

from fresh_process import run_fresh

CHILD = r"""
import json, sys, time
import torch
from fresh_process import peak_rss_kb, rss_kb
from minilearn.losses import token_logprobs

method, n, v, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
logits = torch.randn(n, v, requires_grad=True)
targets = torch.randint(0, v, (n,))
weights = torch.rand(n)


base = rss_kb()
t0 = time.perf_counter()
if method == "naive":
    lp = torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0]
else:
    lp = token_logprobs(logits, targets)
loss = -(lp * weights).sum()
loss.backward()
elapsed = time.perf_counter() - t0
print(json.dumps({"time": elapsed, "extra_mb": (peak_rss_kb() - base) / 1024, "loss": loss.item()}))
"""


def measure(method: str, n: int, v: int, threads: int) -> dict:
    return run_fresh(CHILD, [method, n, v, threads], threads)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=128_256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    print(f"N={args.tokens} tokens, V={args.vocab}, float32 logits ({args.tokens * args.vocab * 4 / 2**30:.2f} GiB), "
          f"threads={args.threads}, {args.reps} interleaved reps, each in a fresh process")
    runs = {"naive": [], "token_logprobs": []}
    for rep in range(args.reps):
        for method in runs:  # interleaved, so drift hits both
            r = measure(method, args.tokens, args.vocab, args.threads)
            runs[method].append(r)
            print(f"rep {rep + 1} {method:>14}: {r['time']:.3f} s, peak extra {r['extra_mb']:.0f} MB, loss {r['loss']:.4f}")
    naive, ours = runs["naive"], runs["token_logprobs"]
    assert abs(naive[0]["loss"] - ours[0]["loss"]) <= 1e-3 * abs(naive[0]["loss"]), "the two disagree"
    mem = statistics.median(o["extra_mb"] for o in ours) / statistics.median(n["extra_mb"] for n in naive)
    tim = statistics.median(o["time"] / n["time"] for o, n in zip(ours, naive))
    print(f"token_logprobs vs naive: peak extra memory ratio {mem:.3f} (target <= 0.5), "
          f"time ratio {tim:.3f} (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
