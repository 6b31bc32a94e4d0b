"""The learning-rate range test behind `Learner.lr_find`, and fastai's four rules for reading a
learning rate off its curve (`steep`, `valley`, `slide`, `minimum`), matching fastai's numbers."""

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib
from fastprogress.core import in_notebook

from minilearn.callback import Callback
from minilearn.exceptions import CancelFitException
from minilearn.order import Order

__all__ = ["LRFinderCB", "lr_find", "SuggestedLRs", "steep", "valley", "slide", "minimum"]


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The lr where the loss falls fastest per unit of log lr: the left end of the steepest step.

    >>> steep([1, 10, 100, 1000], [5.0, 4.0, 1.5, 9.0])
    10
    """
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(losses) - 1)]
    return lrs[slopes.index(min(slopes))]


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's default: about halfway along the longest valley, the longest run of points (in lr
    order, not necessarily adjacent) each lower than the one before.

    >>> valley([1, 2, 3, 4, 5, 6, 7], [5.0, 4.0, 6.0, 3.0, 2.0, 1.0, 9.0])  # 5, 4, 3, 2, 1: 5 points ending at index 5
    2
    """
    longest: list[int] = []  # of the runs ending at each point
    for i, loss in enumerate(losses):
        longest.append(1 + max((longest[j] for j in range(i) if losses[j] > loss), default=0))
    end = longest.index(max(longest))
    start = end - longest[end]  # fastai's start: one before the run's first point, were it contiguous
    third = (end - start) / 3
    return lrs[max(start + int(third) + int(third / 2), 0)]  # fastai wraps a 2-point run round to the last lr


def slide(lrs: Sequence[float], losses: Sequence[float], lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's interval slide rule: slide a window of `lr_diff` points from the end of the curve towards
    the start while the slopes (per point) at its two ends differ by more than `thresh`; the lr at the
    window's left end where they first agree, the last flat stretch before the loss takes off.

    >>> slide([1, 2, 3, 4, 5], [1.0, 1.0, 1.0, 1.0, 3.0], lr_diff=2, thresh=0.1)
    2
    """
    n = len(losses)
    slope = [losses[1] - losses[0], *((losses[i + 1] - losses[i - 1]) / 2 for i in range(1, n - 1)), losses[-1] - losses[-2]]
    right, left = n - 1, max(n - 1 - lr_diff, 0)  # fastai raises on a curve shorter than the window
    lr = lrs[left]
    while left >= 0 and abs(slope[right] - slope[left]) > thresh:
        lr, right, left = lrs[left], right - 1, left - 1
    return lr


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """A tenth of the lr of the lowest loss: at the minimum itself training is about to diverge.

    >>> minimum([1.0, 10.0, 100.0], [3.0, 1.0, 2.0])
    1.0
    """
    return lrs[losses.index(min(losses))] / 10


class SuggestedLRs(NamedTuple):
    """What `learn.lr_find()` returns: the learning rate each rule reads off the curve. `steep` comes
    first: it trained best in tests/bench/lr_find_suggestions.py, where fastai's `valley` was often too low.

    >>> SuggestedLRs(steep=0.0182, valley=1.2e-4, slide=3e-3, minimum=0.03)
    SuggestedLRs(steep=1.82e-02, valley=1.20e-04, slide=3.00e-03, minimum=3.00e-02)
    """

    steep: float
    valley: float
    slide: float
    minimum: float

    def __repr__(self) -> str:
        return "SuggestedLRs(" + ", ".join(f"{name}={lr:.2e}" for name, lr in self._asdict().items()) + ")"


class LRFinderCB(Callback):
    """Raise the learning rate exponentially from `start_lr` to `end_lr` over `num_it` training
    batches, recording the loss, until the smoothed loss exceeds `stop_factor` times its best (fastai's
    rule). Weights and optimizer state are restored however the fit ends; `learn.trial_fit` is True
    meanwhile. Use it through `learn.lr_find()`; `lrs` and `losses` hold what it recorded.
    """

    order = Order.LR_FINDER

    def __init__(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_factor: float = 4.0):
        if not 0 < start_lr < end_lr:
            raise ValueError(f"need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}")
        if num_it < 2:
            raise ValueError(f"num_it must be at least 2, got {num_it}")
        self.start_lr, self.end_lr, self.num_it, self.stop_factor = start_lr, end_lr, num_it, stop_factor
        self.lrs: list[float] = []
        self.losses: list[float] = []

    def before_fit(self, learn):
        # Deep copies, so the restore is bit for bit whatever training does to the tensors in place.
        self.model_state = copy.deepcopy(learn.model.state_dict())
        self.opt_state = copy.deepcopy(learn.opt.state_dict())
        self.lrs, self.losses, self.best = [], [], math.inf
        self.was_trial_fit, learn.trial_fit = learn.trial_fit, True

    def before_batch(self, learn):
        lr = self.start_lr * (self.end_lr / self.start_lr) ** (len(self.lrs) / (self.num_it - 1))
        for group in learn.opt.param_groups:
            group["lr"] = lr
        self.lrs.append(lr)

    def after_loss(self, learn):
        self.losses.append(learn.loss.item())
        smoothed = self.smoothed_losses()[-1]
        self.best = min(self.best, smoothed)
        if len(self.lrs) >= self.num_it or not math.isfinite(smoothed) or smoothed > self.stop_factor * self.best:
            raise CancelFitException()

    def cleanup_fit(self, learn):
        learn.model.load_state_dict(self.model_state)
        learn.opt.load_state_dict(self.opt_state)
        learn.trial_fit = self.was_trial_fit

    def smoothed_losses(self, beta: float = 0.98) -> list[float]:
        """The recorded losses smoothed by a bias-corrected exponential moving average (fastai's)."""
        avg, out = 0.0, []
        for i, loss in enumerate(self.losses, 1):
            avg = beta * avg + (1 - beta) * loss
            out.append(avg / (1 - beta**i))
        return out

    def curve(self) -> tuple[list[float], list[float]]:
        """The smoothed curve the rules read, cut as fastai cuts it: without the first tenth of `num_it`
        (the loss has not moved yet), the last 5 points (the blow-up), and anything from the first NaN."""
        losses = self.smoothed_losses()
        first_nan = next((i for i, loss in enumerate(losses) if math.isnan(loss)), len(losses))
        keep = slice(self.num_it // 10, min(len(losses) - 5, first_nan))
        return self.lrs[keep], losses[keep]

    def suggestions(self) -> SuggestedLRs:
        """The learning rate each rule reads off `curve()`."""
        lrs, losses = self.curve()
        if len(losses) < 3:
            raise ValueError(f"lr_find recorded {len(self.losses)} losses, {len(losses)} once the first "
                             f"num_it // 10 = {self.num_it // 10} and the last 5 are left out; it needs at least 3 "
                             "to suggest a learning rate: raise num_it, or lower start_lr if the loss blew up early")
        return SuggestedLRs(*(rule(lrs, losses) for rule in (steep, valley, slide, minimum)))

    def plot(self):
        """Plot the smoothed loss against the learning rate on a log axis, without its last 5 points
        (fastai's view), with a dot at each suggestion; returns the matplotlib axes."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        n = max(len(self.losses) - 5, 1)
        ax.plot(self.lrs[:n], self.smoothed_losses()[:n])
        ax.set(xscale="log", xlabel="learning rate (log scale)", ylabel="loss (smoothed)")
        lrs, losses = self.curve()
        if len(losses) >= 3:
            for name, lr in self.suggestions()._asdict().items():  # dot at the nearest recorded point
                near = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / lr)))
                ax.plot(lr, losses[near], "o", label=f"{name}: {lr:.2e}")
            ax.legend(loc="best")
        return ax

    def show_plot(self, path: str = "lr_find.png") -> None:
        """`plot()` where it can be seen: in a notebook, or a window under an interactive matplotlib
        backend. Elsewhere (a script under the `agg` backend, CI) save it to `path` and say so."""
        import matplotlib.pyplot as plt
        ax = self.plot()
        if in_notebook():
            return  # the notebook shows the figure under the cell
        # A backend that only draws into a file or a buffer has no window to show a plot in.
        if matplotlib.get_backend().lower() not in {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}:
            return plt.show()
        ax.figure.savefig(path, bbox_inches="tight")
        plt.close(ax.figure)
        print(f"lr_find: matplotlib's {matplotlib.get_backend()!r} backend has no window, so the plot was "
              f"saved to {path} (show_plot=False skips it)", flush=True)


def lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
            show_plot: bool = True) -> SuggestedLRs:
    """Run `LRFinderCB` on `learn` for up to `num_it` training batches (as many epochs as that takes)
    and return each rule's suggestion. A learner that had no optimizer has none again afterwards."""
    had_opt, finder = learn.opt is not None, LRFinderCB(start_lr, end_lr, num_it)
    try:
        n_batches = len(learn.dls.train)
    except TypeError:  # an iterable without a length: one batch an epoch is the safe guess
        n_batches = 1
    try:
        learn.fit(math.ceil(num_it / max(n_batches, 1)), cbs=finder, valid=False)
    finally:
        if not had_opt:
            learn.opt = None
    suggestions = finder.suggestions()
    if show_plot and learn.is_main_process:
        finder.show_plot()
    return suggestions
