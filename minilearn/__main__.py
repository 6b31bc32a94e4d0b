"""Command line: `python -m minilearn demo [--epochs N] [--out PNG]`."""

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="minilearn", description="minilearn command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small model on generated data, print the table, save the loss plot")
    demo.add_argument("--epochs", type=int, default=8, help="epochs to train (default 8)")
    demo.add_argument("--samples", type=int, default=6000, help="training samples to generate (default 6000)")
    demo.add_argument("--out", default="minilearn_demo_loss.png", help="where to write the loss plot PNG")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from minilearn.demo import run_demo
    row = run_demo(epochs=args.epochs, n=args.samples, out=args.out, seed=args.seed)
    print(f"final validation: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
