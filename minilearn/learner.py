"""The Learner: a training loop that does nothing but call its callbacks."""

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from fastcore.basics import store_attr
from fastcore.foundation import L

from minilearn.callback import Callback, warn_misspelt_events
from minilearn.custom_loss import CustomLossResult, LogprobLossFn, forward_backward_custom
from minilearn.events import EVENTS, STEPS
from minilearn.exceptions import (CancelBatchException, CancelEpochException, CancelFitException,
                                  UnknownEventError)
from minilearn.lr_finder import LRFinderCB
from minilearn.train import TrainCB

__all__ = ["Learner"]

CallbackArg = Callback | type | Iterable | None
_PHASE_EVENTS = {p: (f"before_{p}", f"after_{p}", f"cleanup_{p}") for p in ("fit", "epoch", "batch")}


def _no_owner(step: str) -> Callable:
    def run(learn):
        raise RuntimeError(f"no callback owns the step {step!r}: add TrainCB() or a callback that defines {step}()")
    return run


class Learner:
    """Trains `model` on `dls.train` (and evaluates on `dls.valid`) by calling callbacks.

    - `dls`: any object with `train` and `valid` iterables of batches (see `DataLoaders`).
    - `loss_func(preds, *targets)`: may be left out when a callback owns `get_loss`.
    - `opt_func(params, lr=lr)`: builds the optimizer at the first `fit` (or with `reset_opt=True`).
    - `n_inp`: for tuple batches, how many leading items go to the model.

    >>> from minilearn import DataLoaders
    >>> model = torch.nn.Linear(3, 1)
    >>> dls = DataLoaders([(torch.randn(8, 3), torch.randn(8, 1))], [])
    >>> learn = Learner(model, dls, torch.nn.functional.mse_loss, lr=0.1)
    >>> learn.fit(2)
    """

    def __init__(self, model: torch.nn.Module, dls: Any, loss_func: Callable | None = None, lr: float = 0.1,
                 opt_func: Callable = torch.optim.SGD, cbs: CallbackArg = None, n_inp: int = 1):
        store_attr("model,dls,loss_func,lr,opt_func,n_inp")
        self.opt: torch.optim.Optimizer | None = None
        self.cbs: list[Callback] = []
        self.epoch, self.iter, self.training = 0, 0, False
        self.loss_metrics: dict = {}
        self.loss_parts = None
        self.is_main_process = True  # AccelerateCB sets it; printing callbacks print only where it is True
        cbs = L(cbs)
        self.add_cbs(cbs if any(isinstance(cb, TrainCB) for cb in cbs) else [TrainCB(), *cbs])

    # ---- callbacks -----------------------------------------------------------------------------

    def add_cbs(self, cbs: CallbackArg) -> None:
        """Add one callback or several; warns about methods that look like misspelt event names."""
        for cb in L(cbs):
            if not isinstance(cb, Callback):
                raise TypeError(f"expected a Callback instance, got {cb!r} of type {type(cb).__name__}")
            warn_misspelt_events(cb)
            self.cbs.append(cb)
        self._build_dispatch()

    def remove_cbs(self, cbs: CallbackArg) -> None:
        """Remove callbacks: instances, or every callback of a given class."""
        for cb in L(cbs):
            self.cbs = [c for c in self.cbs if not (c is cb or (isinstance(cb, type) and isinstance(c, cb)))]
        self._build_dispatch()

    @contextmanager
    def added_cbs(self, cbs: CallbackArg) -> Iterator[None]:
        """Add callbacks for the length of a `with` block; they are removed also when it raises."""
        added = [cb for cb in L(cbs) if all(cb is not c for c in self.cbs)]
        self.add_cbs(added)
        try:
            yield
        finally:
            self.remove_cbs(added)

    def _build_dispatch(self) -> None:
        # Done once per change of the callback list, so a batch never searches for its handlers.
        ordered = sorted(self.cbs, key=lambda cb: cb.order)  # stable: ties keep the order of adding
        self._handlers = {e: [getattr(cb, e) for cb in ordered if callable(getattr(cb, e, None))] for e in EVENTS}
        self._owners: dict[str, Callback | None] = {s: None for s in STEPS}
        for cb in ordered:  # later (higher order) callbacks overwrite earlier ones
            for s in STEPS:
                if callable(getattr(cb, s, None)):
                    self._owners[s] = cb
        self._steps = {s: getattr(cb, s) if cb else _no_owner(s) for s, cb in self._owners.items()}

    @property
    def step_owners(self) -> dict[str, Callback | None]:
        """The callback that owns each step now (None where no callback defines it)."""
        return dict(self._owners)

    def callback(self, event: str) -> None:
        """Run the `event` method of every callback that has one, in `order`."""
        try:
            handlers = self._handlers[event]
        except KeyError:
            raise UnknownEventError(f"unknown event {event!r}; the events are {EVENTS}") from None
        for handler in handlers:
            handler(self)

    def show_cbs(self) -> None:
        """Print which callback owns each step and which callbacks listen to each event."""
        print("step        owner")
        for s, cb in self._owners.items():
            print(f"{s:<11} {f'{cb.name} (order {cb.order})' if cb else '(none)'}")
        print("\nevent           callbacks (in order)")
        for e, hs in self._handlers.items():
            if hs:
                print(f"{e:<15} {', '.join(f'{h.__self__.name}({h.__self__.order})' for h in hs)}")

    # ---- the five steps: each runs in the one callback that owns it -----------------------------

    def predict(self) -> None: self._steps["predict"](self)
    def get_loss(self) -> None: self._steps["get_loss"](self)
    def backward(self) -> None: self._steps["backward"](self)
    def step(self) -> None: self._steps["step"](self)
    def zero_grad(self) -> None: self._steps["zero_grad"](self)

    # ---- losses over log-probabilities, a batch at a time (Tinker style) ----------------------

    def forward_backward_custom(self, batch: dict, fn: LogprobLossFn, two_pass: bool = False,
                                micro_batch_size: int | None = None,
                                ref_model: torch.nn.Module | None = None) -> CustomLossResult:
        """Compute `fn(batch, logprobs)` and leave its gradient in the parameters; see
        `minilearn.custom_loss.forward_backward_custom`. Apply it with `optim_step()`."""
        return forward_backward_custom(self, batch, fn, two_pass, micro_batch_size, ref_model)

    def optim_step(self) -> None:
        """Apply the gradients in the parameters, then clear them: the `step` and `zero_grad` steps
        (through the callbacks that own them). Builds the optimizer first if there is none yet."""
        if self.opt is None:
            self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
        self.step()
        self.zero_grad()

    # ---- the loop -------------------------------------------------------------------------------

    def _with_events(self, name: str, body: Callable[[], None], cancel: type[Exception]) -> None:
        # A cancel exception skips the rest of `body` (or of before_*), then after_* runs;
        # cleanup_* runs whatever happened.
        before, after, cleanup = _PHASE_EVENTS[name]  # built once: this runs for every batch
        try:
            try:
                self.callback(before)
                body()
            except cancel:
                pass
            self.callback(after)
        except cancel:
            pass
        finally:
            self.callback(cleanup)

    def _one_batch(self) -> None:
        self.predict(); self.callback("after_predict")
        self.get_loss(); self.callback("after_loss")
        if self.training:
            self.backward(); self.callback("after_backward")
            self.step(); self.callback("after_step")
            self.zero_grad()

    def _one_epoch(self) -> None:
        for self.iter, self.batch in enumerate(self.dl):
            # Cleared so that a batch cancelled early never shows the previous batch's results.
            self.preds, self.loss, self.loss_metrics, self.loss_parts = None, None, {}, None
            self._with_events("batch", self._one_batch, CancelBatchException)

    def one_epoch(self, training: bool) -> None:
        """Run one pass over `dls.train` (training) or `dls.valid` (eval mode, no gradients)."""
        self.model.train(training)
        self.training = training
        self.dl = self.dls.train if training else self.dls.valid
        with torch.set_grad_enabled(training):
            self._with_events("epoch", self._one_epoch, CancelEpochException)

    def _fit(self, train: bool, valid: bool) -> None:
        for self.epoch in self.epochs:
            if train: self.one_epoch(True)
            if valid: self.one_epoch(False)

    def fit(self, n_epochs: int = 1, cbs: CallbackArg = None, lr: float | None = None, train: bool = True,
            valid: bool = True, reset_opt: bool = False) -> None:
        """Train for `n_epochs`, each a training pass then a validation pass.

        `cbs` are added for this call only. `lr` replaces the learning rate from now on. The optimizer
        is kept between calls (momentum and all); `reset_opt=True` builds a fresh one.
        """
        if not isinstance(n_epochs, int) or n_epochs < 0:
            raise ValueError(f"n_epochs must be a whole number >= 0, got {n_epochs!r}")
        was_training = self.model.training
        with self.added_cbs(cbs):
            try:
                if lr is not None:
                    self.lr = lr
                if self.opt is None or reset_opt:
                    self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
                elif lr is not None:
                    for group in self.opt.param_groups:
                        group["lr"] = lr
                self.n_epochs, self.epochs = n_epochs, range(n_epochs)
                self._with_events("fit", lambda: self._fit(train, valid), CancelFitException)
            finally:
                self.model.train(was_training)

    # ---- state saved by a callback that knows how (AccelerateCB) ---------------------------------

    def _state_owner(self, method: str) -> Callback:
        owners = [cb for cb in sorted(self.cbs, key=lambda cb: cb.order) if callable(getattr(cb, method, None))]
        if not owners:
            raise RuntimeError(f"no callback can {method.replace('_', ' ')}: add AccelerateCB()")
        return owners[-1]

    def save_state(self, path) -> None:
        """Save the full training state (model, optimizer, RNGs, scaler) through the callback that
        owns it (AccelerateCB: `Accelerator.save_state`)."""
        self._state_owner("save_state").save_state(path)

    def load_state(self, path) -> None:
        """Load what `save_state` wrote, through the same callback."""
        self._state_owner("load_state").load_state(path)

    # ---- tools built on fit ----------------------------------------------------------------------

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                show_plot: bool = True) -> float:
        """Train for up to `num_it` batches with the learning rate growing exponentially from
        `start_lr` to `end_lr`, stop when the loss blows up, and return a suggested learning rate
        (where the smoothed loss falls fastest). The model and optimizer are restored afterwards."""
        had_opt = self.opt is not None
        finder = LRFinderCB(start_lr, end_lr, num_it)
        try:
            n_batches = len(self.dls.train)
        except TypeError:
            n_batches = 1
        try:
            self.fit(math.ceil(num_it / max(n_batches, 1)), cbs=finder, valid=False)
        finally:
            if not had_opt:
                self.opt = None
        if show_plot:
            finder.plot()
        return finder.suggestion()
