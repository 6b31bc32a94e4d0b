"""The learning-rate range test behind `Learner.lr_find`: `LRFinderCB`, `lr_find`, and the ways of
choosing one learning rate from its curve (fastai's `valley`, `steep` and `minimum`)."""

import copy
import math
from collections.abc import Callable, Sequence

from minilearn.callback import Callback
from minilearn.exceptions import CancelFitException
from minilearn.order import Order

__all__ = ["LRFinderCB", "lr_find", "valley", "steep", "minimum", "SUGGESTIONS"]


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The lr halfway along the longest valley: the longest run of points, in lr order, each with a
    lower loss than the one before (not necessarily adjacent). It sits in the long stretch where the
    loss keeps falling, away from the noisy start and from the minimum, past which the loss blows up.
    fastai's default.

    >>> valley([1, 2, 3, 4, 5, 6, 7], [5.0, 4.0, 6.0, 3.0, 2.0, 1.0, 9.0])  # valley 5, 4, 3, 2, 1: indices 0 to 5
    3
    """
    n = len(losses)
    length, start = [1] * n, list(range(n))  # of the longest valley ending at each point
    for i in range(n):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 > length[i]:
                length[i], start[i] = length[j] + 1, start[j]
    end = max(range(n), key=lambda i: (length[i], -i))  # the longest; the first of equals
    return lrs[start[end] + (end - start[end]) // 2]


def steep(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The lr where the loss falls fastest per unit of log lr (a central difference), looking only
    before the loss's minimum.

    >>> steep([1, 10, 100, 1000, 10000, 100000], [5.0, 4.0, 1.5, 1.4, 1.3, 9.0])
    10
    """
    end = max(min(range(len(losses)), key=losses.__getitem__), 2)
    slopes = [(losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in range(1, end)]
    return lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]


def minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """A tenth of the lr of the lowest loss: at the minimum itself training is about to diverge.

    >>> minimum([1.0, 10.0, 100.0], [3.0, 1.0, 2.0])
    1.0
    """
    return lrs[min(range(len(losses)), key=losses.__getitem__)] / 10


# The ways `LRFinderCB.suggestion` and `lr_find` choose one learning rate, by name.
SUGGESTIONS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "valley": valley, "steep": steep, "minimum": minimum}


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

    def suggestion(self, method: str = "valley") -> float:
        """One learning rate from the smoothed curve, chosen by `method`: `"valley"` (the default),
        `"steep"` or `"minimum"` (see `SUGGESTIONS`)."""
        if method not in SUGGESTIONS:
            raise ValueError(f"unknown lr_find method {method!r}: choose one of {sorted(SUGGESTIONS)}")
        losses = self.smoothed_losses()
        if len(losses) < 3:
            raise ValueError(f"lr_find recorded {len(losses)} losses; it needs at least 3 to suggest a learning rate")
        return SUGGESTIONS[method](self.lrs[:len(losses)], losses)

    def plot(self, method: str = "valley"):
        """Plot the smoothed loss against the learning rate on a log axis, the lr `method` chooses
        marked; returns the matplotlib axes."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        n = len(self.losses)
        ax.plot(self.lrs[:n], self.smoothed_losses())
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("loss (smoothed)")
        if n >= 3:
            lr = self.suggestion(method)
            ax.axvline(lr, color="red", linestyle="--", label=f"{method}: lr {lr:.2e}")
            ax.legend()
        return ax


def lr_find(learn, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, show_plot: bool = True,
            method: str = "valley") -> float:
    """Run `LRFinderCB` on `learn` for up to `num_it` training batches (as many epochs as that takes),
    then return the learning rate `method` chooses (`"valley"`, `"steep"` or `"minimum"`); see
    `Learner.lr_find`. A learner that had no optimizer has none again afterwards."""
    if method not in SUGGESTIONS:
        raise ValueError(f"unknown lr_find method {method!r}: choose one of {sorted(SUGGESTIONS)}")
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
        finder.plot(method)
    return finder.suggestion(method)
