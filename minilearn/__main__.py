"""Command line: `python -m minilearn demo [options]` (see `--help`)."""

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `minilearn` command line; `--help` of each command shows every option with its default."""
    parser = argparse.ArgumentParser(prog="minilearn", description="minilearn command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                          help="train a small code language model with the key-token weighted loss and a plain "
                               "cross-entropy baseline, print the tables, save the comparison plot",
                          description="Train the same small causal LM on installed Python code twice (plain "
                                      "cross-entropy, key-token weighted loss) and compare them.")
    demo.add_argument("--epochs", type=int, default=2, help="epochs for each run")
    demo.add_argument("--chars", type=int, default=1_000_000, help="characters of installed Python code to train on")
    demo.add_argument("--alpha", type=float, default=1.0, help="key-token loss weight scale")
    demo.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule")
    demo.add_argument("--out", default="minilearn_demo_loss.png",
                      help="where to write the plot (plain validation loss and key-token accuracy per epoch)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the weights, the split and the batch order")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    args = build_parser().parse_args(argv)
    from minilearn.demo.run import run_demo
    results = run_demo(epochs=args.epochs, max_chars=args.chars, alpha=args.alpha, lr=args.lr, out=args.out,
                       seed=args.seed)
    print("key-token accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
