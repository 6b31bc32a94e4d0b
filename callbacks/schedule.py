"""Learning-rate schedules stepped once per training batch."""

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

from minilearn.callback import Callback

__all__ = ["BatchSchedCB", "OneCycleCB"]


class BatchSchedCB(Callback):
    """Build a PyTorch scheduler when `fit` starts, `sched_fn(optimizer)`, and step it after every
    optimizer step. The scheduler is on `self.sched`.

    >>> from functools import partial
    >>> cb = BatchSchedCB(partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=100))
    """

    order = 60

    def __init__(self, sched_fn: Callable[[torch.optim.Optimizer], LRScheduler]):
        self.sched_fn = sched_fn

    def before_fit(self, learn):
        self.sched = self.sched_fn(learn.opt)

    def after_step(self, learn):
        self.sched.step()

    def state_dict(self) -> dict:
        """The scheduler's state (empty before the first fit), kept in checkpoints so that a resumed fit
        goes on with the same learning rates."""
        sched = getattr(self, "sched", None)
        return sched.state_dict() if sched is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` gave. Without a scheduler yet (outside a fit) there is nothing to
        load into: each fit builds its own schedule."""
        sched = getattr(self, "sched", None)
        if sched is not None and state:
            sched.load_state_dict(state)


class OneCycleCB(BatchSchedCB):
    """The one-cycle policy over the whole `fit`: the learning rate warms up from `lr_max / div` to
    `lr_max` over the first `pct_start` of the batches, then anneals (cosine) to `lr_max / (div *
    final_div)`. Momentum (or Adam's beta1) cycles the other way when the optimizer has it.
    This is `torch.optim.lr_scheduler.OneCycleLR` with its length taken from the fit.
    """

    def __init__(self, lr_max: float, pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e4):
        self.lr_max, self.pct_start, self.div, self.final_div = lr_max, pct_start, div, final_div

    def before_fit(self, learn):
        defaults = learn.opt.defaults
        # Cycling momentum on an SGD built without it would quietly switch momentum on.
        has_momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
        self.sched = OneCycleLR(learn.opt, max_lr=self.lr_max, total_steps=max(learn.n_epochs * len(learn.dls.train), 1),
                                pct_start=self.pct_start, div_factor=self.div, final_div_factor=self.final_div,
                                cycle_momentum=has_momentum)
