"""Benchmark: plug-in losses on hidden states through the fused head (`LinearLogits`) against the naive
path `loss(log_softmax(hidden @ weight.T))`, forward and backward, at N=4096 tokens, D=512, V=128,256.

Methods, each measured in a fresh subprocess (see measure.py):
- `naive`: the logits and their full log-softmax, handed to the loss (what `log_softmax(h @ W.T)`
  followed by `.gather` costs, with the loss's own work on top);
- `logits`: the logits handed to the loss, which computes chunked log-probabilities from them
  (minilearn without the fused head);
- `fused`: `LinearLogits(hidden, weight)` handed to the loss (the logits are never held);
- `liger`: Liger-Kernel's fused linear cross-entropy (plain, unweighted), on CUDA when it is installed.

Peak extra memory is the peak during forward + backward minus what was held once the inputs
(hidden states and output weight needing gradients, targets, per-token inputs) existed: resident
memory on CPU, allocated CUDA memory on a GPU. The weight's gradient (V x D), which every method
must produce, counts for all. Targets (DESIGN.md): fused/naive memory at most 0.1, time at most 1.0.
Then a table over V for the weighted cross-entropy, to show how each method grows.

    python tests/bench/fused_head.py [--reps 1] [--threads 2] [--device cpu] [--vocabs 32000,64000,128256]
"""

import argparse
import statistics
import sys

from measure import measure

CHILD = r"""
import json, math, sys, time
import torch
from measure import memory_mb, peak_memory_mb
from minilearn.losses import LinearLogits, PolicyGradientLoss, WeightedCrossEntropy

method, loss_name, device = sys.argv[1], sys.argv[2], sys.argv[6]
n, d, v, threads = (int(a) for a in sys.argv[3:6] + sys.argv[7:8])
torch.set_num_threads(threads)
torch.manual_seed(0)
hidden = torch.randn(n, d, device=device).requires_grad_()
weight = (torch.randn(v, d, device=device) / d ** 0.5).requires_grad_()
targets = torch.randint(0, v, (n,), device=device)
weights = torch.rand(n, device=device)
sampler_logprobs = -math.log(v) + 0.3 * torch.randn(n, device=device)  # near the model's: ratios near 1
advantages = torch.randn(n, device=device)
loss = {"weighted_ce": lambda logits: WeightedCrossEntropy()(logits, targets, weights),
        "ppo": lambda logits: PolicyGradientLoss("ppo")(logits, targets, sampler_logprobs, advantages)}[loss_name]


def forward():
    if method == "naive":
        return loss(torch.log_softmax(hidden @ weight.T, -1))
    if method == "logits":
        return loss(hidden @ weight.T)
    if method == "fused":
        return loss(LinearLogits(hidden, weight))
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    return LigerFusedLinearCrossEntropyLoss()(weight, hidden, targets)


base = memory_mb(device)
t0 = time.perf_counter()
out = forward()
out.backward()
if device == "cuda":
    torch.cuda.synchronize()
elapsed = time.perf_counter() - t0
print(json.dumps({"time": elapsed, "extra_mb": peak_memory_mb(device) - base, "loss": out.item(),
                  "grad_norm": weight.grad.norm().item()}))
"""


def run(method: str, loss: str, n: int, d: int, v: int, args) -> dict:
    """The median time and peak extra memory over `args.reps` fresh processes."""
    runs = [measure(CHILD, method, loss, n, d, v, args.device, args.threads, threads=args.threads)
            for _ in range(args.reps)]
    return {"time": statistics.median(r["time"] for r in runs), "extra_mb": statistics.median(r["extra_mb"] for r in runs),
            "loss": runs[0]["loss"], "grad_norm": runs[0]["grad_norm"]}


def check_agree(a: dict, b: dict, what: str) -> None:
    for key in ("loss", "grad_norm"):
        assert abs(a[key] - b[key]) <= 1e-3 * abs(b[key]), f"{what}: {key} {a[key]} vs {b[key]}"


def liger_available(device: str) -> bool:
    if device != "cuda":
        return False
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--vocab", type=int, default=128_256)
    p.add_argument("--vocabs", default="32000,64000,128256", help="vocabulary sizes of the table")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args()
    n, d = args.tokens, args.dim
    print(f"N={n} tokens, D={d}, float32, device={args.device}, torch threads={args.threads}, median of {args.reps} "
          f"fresh process(es) a measurement")

    results = {}
    for loss in ("weighted_ce", "ppo"):
        for method in ("naive", "logits", "fused"):
            results[loss, method, args.vocab] = r = run(method, loss, n, d, args.vocab, args)
            print(f"V={args.vocab} {loss:>11} {method:>6}: {r['time']:7.3f} s, peak extra {r['extra_mb']:7.0f} MB, "
                  f"loss {r['loss']:.4f}")
        naive, fused = results[loss, "naive", args.vocab], results[loss, "fused", args.vocab]
        check_agree(fused, naive, loss)
        print(f"{loss}: fused vs naive peak extra memory ratio {fused['extra_mb'] / naive['extra_mb']:.3f} "
              f"(target <= 0.1), time ratio {fused['time'] / naive['time']:.3f} (target <= 1.0)")

    methods = ["naive", "logits", "fused"] + (["liger"] if liger_available(args.device) else [])
    print(f"\nweighted cross-entropy over V ({', '.join(methods)}): peak extra MB and seconds"
          + ("; liger is plain cross-entropy" if "liger" in methods else ""))
    print(f"{'V':>7} | " + " | ".join(f"{m + ' MB':>10} {m + ' s':>9}" for m in methods) + " | fused/naive MB, s")
    for v in (int(x) for x in args.vocabs.split(",")):
        row = {m: results.get(("weighted_ce", m, v)) or run(m, "weighted_ce", n, d, v, args) for m in methods}
        check_agree(row["fused"], row["naive"], f"V={v}")
        print(f"{v:>7} | " + " | ".join(f"{row[m]['extra_mb']:>10.0f} {row[m]['time']:>9.3f}" for m in methods)
              + f" | {row['fused']['extra_mb'] / row['naive']['extra_mb']:.3f}, "
                f"{row['fused']['time'] / row['naive']['time']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
