"""Command line: `python -m minilearn demo [options]` (see `--help`)."""

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="minilearn", description="minilearn command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small code language model with the key-token weighted loss "
                                       "and a plain cross-entropy baseline, print the tables, save the loss plot")
    demo.add_argument("--epochs", type=int, default=2, help="epochs for each run (default 2)")
    demo.add_argument("--chars", type=int, default=1_000_000, help="characters of installed Python code to train on")
    demo.add_argument("--alpha", type=float, default=1.0, help="key-token loss weight scale (default 1.0)")
    demo.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    demo.add_argument("--out", default="minilearn_demo_loss.png", help="where to write the loss plot PNG")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from minilearn.demo import run_demo
    results = run_demo(epochs=args.epochs, max_chars=args.chars, alpha=args.alpha, lr=args.lr, out=args.out,
                       seed=args.seed)
    print("key-token accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
