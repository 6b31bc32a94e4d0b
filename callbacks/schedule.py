"""Learning-rate schedules stepped once per training batch."""

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LRScheduler, OneCycleLR

from minilearn.callback import Callback
from minilearn.optim import optimizer_settings, restore_optimizer_settings
from minilearn.order import Order

__all__ = ["BatchSchedCB", "OneCycleCB"]


class BatchSchedCB(Callback):
    """Build a PyTorch scheduler when `fit` starts, `sched_fn(optimizer)`, and step it after every
    optimizer step. The scheduler is on `self.sched`.

    When the fit ends (however it ends) the optimizer's hyperparameters are put back as they were
    when it started, so the next fit starts at `learn.lr`, not where the schedule left off.

    >>> from functools import partial
    >>> cb = BatchSchedCB(partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=100))
    """

    order = Order.SCHEDULE

    def __init__(self, sched_fn: Callable[[torch.optim.Optimizer], LRScheduler] | None):
        self.sched_fn = sched_fn
        self.sched: LRScheduler | None = None
        self.settings = None

    def make_scheduler(self, learn) -> LRScheduler:
        """The scheduler for this fit (called at `before_fit`)."""
        return self.sched_fn(learn.opt)

    def before_fit(self, learn):
        self.settings = optimizer_settings(learn.opt)  # first: cleanup_fit puts them back if the next line raises
        self.sched = self.make_scheduler(learn)

    def after_step(self, learn):
        self.sched.step()

    def cleanup_fit(self, learn):
        if self.settings is not None:  # None when an earlier callback's before_fit stopped the fit
            restore_optimizer_settings(learn.opt, self.settings)
            self.settings = None

    def state_dict(self) -> dict:
        """The scheduler's state (empty before the first fit), kept in checkpoints so that a resumed fit
        goes on with the same learning rates."""
        return self.sched.state_dict() if self.sched is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` gave. Without a scheduler yet (outside a fit) there is nothing to
        load into: each fit builds its own schedule."""
        if self.sched is not None and state:
            self.sched.load_state_dict(state)


class OneCycleCB(BatchSchedCB):
    """The one-cycle policy over the whole `fit`: the learning rate warms up from `lr_max / div` to
    `lr_max` over the first `pct_start` of the batches, then anneals (cosine) to `lr_max / (div *
    final_div)`. Momentum (or Adam's beta1) cycles the other way when the optimizer has it.
    This is `torch.optim.lr_scheduler.OneCycleLR` with its length taken from the fit.
    """

    def __init__(self, lr_max: float, pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e4):
        super().__init__(sched_fn=None)  # the scheduler comes from make_scheduler below
        self.lr_max, self.pct_start, self.div, self.final_div = lr_max, pct_start, div, final_div

    def make_scheduler(self, learn) -> LRScheduler:
        defaults = learn.opt.defaults
        # Cycling momentum on an SGD built without it would quietly switch momentum on.
        has_momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
        total = max(learn.n_epochs * len(learn.dls.train), 1)
        pct = self.pct_start
        if math.isclose(pct * total, 1):  # OneCycleLR divides by the warm-up's length less one step
            pct = 2 / total if total >= 3 else 0.5 / total
        return OneCycleLR(learn.opt, max_lr=self.lr_max, total_steps=total, pct_start=pct, div_factor=self.div,
                          final_div_factor=self.final_div, cycle_momentum=has_momentum)
