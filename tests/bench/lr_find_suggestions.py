"""Which lr_find rule to trust: each rule's suggestion, minilearn's next to fastai's on the same
recorded curve, and the validation accuracy that five one-cycle epochs reach at it.

Two problems: scikit-learn's bundled digits (8x8 images, 10 classes; an MLP) and the three spirals of
nbs/00_quickstart.ipynb (the notebook's MLP), both with AdamW at batch size 64, over a few seeds.
fastai's column needs `fastai.callback.schedule` importable; it imports without torchvision, so
`pip install --no-deps fastai fasttransform plum-dispatch beartype fastdownload requests` is enough
(fastai's own requirements would replace torch). Run by hand, one thread:

    python tests/bench/lr_find_suggestions.py [--seeds 3]
"""

import argparse
import math
import statistics

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from minilearn import DataLoaders, Learner, LRFinderCB
from minilearn.callbacks import MetricsCB, OneCycleCB
from minilearn.lr_finder import SuggestedLRs

try:
    from fastai.callback import schedule as fastai_schedule
except ImportError:
    fastai_schedule = None


def digits(seed: int):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    model = lambda: nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))
    return x[idx], y[idx], model


def spirals(seed: int, n_per_class: int = 1000, n_classes: int = 3, noise: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(n_classes):  # as nbs/00_quickstart.ipynb makes them
        r = torch.linspace(0.05, 1, n_per_class)
        t = torch.linspace(0, 4, n_per_class) + c * 2 * math.pi / n_classes + noise * torch.randn(n_per_class, generator=g)
        xs.append(torch.stack([r * torch.sin(t), r * torch.cos(t)], dim=1))
        ys.append(torch.full((n_per_class,), c))
    x, y = torch.cat(xs), torch.cat(ys)
    idx = torch.randperm(len(x), generator=g)
    model = lambda: nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 3))
    return x[idx], y[idx], model


def accuracy(preds, target):
    return (preds.argmax(dim=-1) == target).float().mean()


def learner(data, seed: int) -> tuple[Learner, MetricsCB]:
    x, y, model = data
    n = int(0.8 * len(x))
    torch.manual_seed(seed)  # the same initial weights and batch order for every run of a seed
    dls = DataLoaders.from_dsets(TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:]), bs=64)
    metrics = MetricsCB(accuracy=accuracy)
    return Learner(model(), dls, F.cross_entropy, lr=1e-3, opt_func=torch.optim.AdamW, cbs=[metrics]), metrics


def fastai_suggestions(finder: LRFinderCB) -> SuggestedLRs | None:
    if fastai_schedule is None:
        return None
    lrs, losses = (torch.tensor(v) for v in finder.curve())  # what fastai's lr_find hands its rules
    return SuggestedLRs(**{name: getattr(fastai_schedule, name)(lrs, losses, finder.num_it)[0] for name in SuggestedLRs._fields})


def one_cycle_accuracy(data, seed: int, lr: float, epochs: int = 5) -> float:
    learn, metrics = learner(data, seed)
    learn.fit(epochs, cbs=OneCycleCB(lr_max=lr))
    return metrics.history[-1]["accuracy"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch threads: {torch.get_num_threads()}; fastai: {'yes' if fastai_schedule else 'not installed'}")
    print("| data | seed | rule | minilearn lr | fastai lr | accuracy after 5 one-cycle epochs |")
    print("|---|---|---|---|---|---|")
    results: dict[tuple[str, str], list[float]] = {}
    for name, make in (("digits", digits), ("spirals", spirals)):
        for seed in range(args.seeds):
            data = make(seed)
            learn, _ = learner(data, seed)
            finder = LRFinderCB()
            learn.fit(math.ceil(finder.num_it / len(learn.dls.train)), cbs=finder, valid=False)
            ours, theirs = finder.suggestions(), fastai_suggestions(finder)
            for rule, lr in ours._asdict().items():
                acc = one_cycle_accuracy(data, seed, lr)
                results.setdefault((name, rule), []).append(acc)
                ref = f"{getattr(theirs, rule):.2e}" if theirs else "-"
                print(f"| {name} | {seed} | {rule} | {lr:.2e} | {ref} | {acc:.3f} |", flush=True)
    print("\n| data | rule | mean accuracy | lowest |\n|---|---|---|---|")
    for (name, rule), accs in results.items():
        print(f"| {name} | {rule} | {statistics.mean(accs):.3f} | {min(accs):.3f} |")


if __name__ == "__main__":
    main()
