"""The learning-rate range test behind `Learner.lr_find`: `LRFinderCB` and `lr_find`."""

import copy
import math

from minilearn.callback import Callback
from minilearn.exceptions import CancelFitException
from minilearn.order import Order

__all__ = ["LRFinderCB", "lr_find"]


class LRFinderCB(Callback):
    """Raise the learning rate exponentially from `start_lr` to `end_lr` over `num_it` training
    batches, recording the loss, and stop early once the loss exceeds `stop_factor` times the best
    seen. The model weights and optimizer state are restored when the fit ends, however it ends.

    Use it through `learn.lr_find()`; `lrs` and `losses` hold what it recorded.
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

    def before_batch(self, learn):
        i = len(self.lrs)
        lr = self.start_lr * (self.end_lr / self.start_lr) ** (i / (self.num_it - 1))
        for group in learn.opt.param_groups:
            group["lr"] = lr
        self.lrs.append(lr)

    def after_loss(self, learn):
        loss = learn.loss.item()
        self.losses.append(loss)
        self.best = min(self.best, loss)
        if len(self.lrs) >= self.num_it or not math.isfinite(loss) or loss > self.stop_factor * self.best:
            raise CancelFitException()

    def cleanup_fit(self, learn):
        learn.model.load_state_dict(self.model_state)
        learn.opt.load_state_dict(self.opt_state)

    def smoothed_losses(self, beta: float = 0.98) -> list[float]:
        """The recorded losses smoothed by a bias-corrected exponential moving average."""
        avg, out = 0.0, []
        for i, loss in enumerate(self.losses, 1):
            avg = beta * avg + (1 - beta) * loss
            out.append(avg / (1 - beta**i))
        return out

    def suggestion(self) -> float:
        """The learning rate at which the smoothed loss falls fastest (per unit of log lr), looking
        only before the loss's minimum."""
        losses = self.smoothed_losses()
        if len(losses) < 3:
            raise ValueError(f"lr_find recorded {len(losses)} losses; it needs at least 3 to suggest a learning rate")
        end = max(min(range(len(losses)), key=losses.__getitem__), 2)
        slopes = [(losses[i + 1] - losses[i - 1]) / (math.log(self.lrs[i + 1]) - math.log(self.lrs[i - 1]))
                  for i in range(1, end)]
        return self.lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]

    def plot(self):
        """Plot the smoothed loss against the learning rate on a log axis; returns the matplotlib axes."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        n = len(self.losses)
        ax.plot(self.lrs[:n], self.smoothed_losses())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("loss (smoothed)")
        if n >= 3:
            ax.axvline(self.suggestion(), color="red", linestyle="--", label=f"suggested lr {self.suggestion():.2e}")
            ax.legend()
        return ax


def lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, show_plot: bool = True) -> float:
    """Run `LRFinderCB` on `learn` for up to `num_it` training batches (as many epochs as that takes),
    then return its suggested learning rate; see `Learner.lr_find`. A learner that had no optimizer
    has none again afterwards."""
    had_opt = learn.opt is not None
    finder = LRFinderCB(start_lr, end_lr, num_it)
    try:
        n_batches = len(learn.dls.train)
    except TypeError:  # an iterable without a length: one batch an epoch is the safe guess
        n_batches = 1
    try:
        learn.fit(math.ceil(num_it / max(n_batches, 1)), cbs=finder, valid=False)
    finally:
        if not had_opt:
            learn.opt = None
    if show_plot:
        finder.plot()
    return finder.suggestion()
