"""The Learner: a training loop that does nothing but call its callbacks."""

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from fastcore.basics import store_attr
from fastcore.meta import delegates
from fastcore.foundation import L

from minilearn.callback import Callback, dispatch_table, listeners, method_owner, warn_misspelt_events
from minilearn.checkpoints.learner_state import load_learner, save_learner
from minilearn.checkpoints.resume import Resume, TrainingPosition
from minilearn.distributed import is_main_process
from minilearn.events import EVENTS, STEPS, TRAIN_BATCH, VALID_BATCH
from minilearn.exceptions import (CancelBatchException, CancelEpochException, CancelFitException, UnknownEventError,
                                  loop_note, loss_left_unset, where_in_fit)
from minilearn.normalized_loss import StepGradients
from minilearn.logprobs.forward_backward import CustomLossResult, LogprobLossFn, forward_backward_custom
from minilearn.lr_finder import SuggestedLRs, lr_find
from minilearn.predictions import Predictions, get_preds, top_losses
from minilearn.show import show_batch
from minilearn.train import TrainCB

__all__ = ["Learner"]

CallbackArg = Callback | type | Iterable | None
_PHASE_EVENTS = {p: (f"before_{p}", f"after_{p}", f"cleanup_{p}") for p in ("fit", "epoch", "batch")}
_CANCELS = (CancelBatchException, CancelEpochException, CancelFitException)
_AFTER_GET_LOSS = TRAIN_BATCH[TRAIN_BATCH.index("get_loss") + 1:]  # where learn.loss has been set


def _check_arguments(model: Any, dls: Any, loss_func: Any) -> None:
    # At Learner(...), so that a slip shows where it was made rather than at the first batch.
    if not isinstance(model, torch.nn.Module):
        swapped = isinstance(dls, torch.nn.Module) and hasattr(model, "train")
        raise TypeError(f"Learner(model, dls, ...) takes the model first, got {type(model).__name__} as the model"
                        + (": the model and dls are the wrong way round" if swapped else ": pass a torch.nn.Module"))
    if dls is not None and not (hasattr(dls, "train") and hasattr(dls, "valid")):  # None: set learn.dls later
        raise TypeError(f"dls must have `train` and `valid` iterables of batches, got {type(dls).__name__}: "
                        f"wrap the loaders, DataLoaders(train_loader, valid_loader)")
    if isinstance(loss_func, type) or not (loss_func is None or callable(loss_func)):
        fix = f"an instance, loss_func={loss_func.__name__}()" if isinstance(loss_func, type) else "a callable"
        raise TypeError(f"loss_func must be a function or a loss module called as loss_func(preds, *targets), got "
                        f"{loss_func!r}: pass {fix}")


def _no_owner(step: str) -> Callable:
    def run(learn):
        raise RuntimeError(f"no callback owns the step {step!r}: add TrainCB() or a callback that defines {step}()")
    return run


class Learner:
    """Trains `model` on `dls.train` (and evaluates on `dls.valid`) by calling callbacks.

    - `dls`: any object with `train` and `valid` iterables of batches (see `DataLoaders`), or None until
      a fit (RL sets `learn.dls` each round).
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
        _check_arguments(model, dls, loss_func)
        store_attr("model,dls,loss_func,lr,opt_func,n_inp")
        self.opt: torch.optim.Optimizer | None = None
        self.cbs: list[Callback] = []
        # The loop's own state (minilearn.events.LOOP_STATE), set as it runs. The last batch and its
        # predictions stay after a fit, for a look at them (SingleBatchCB).
        self.epoch, self.n_epochs, self.epochs, self.iter, self.training = 0, 0, range(0), 0, False
        self.dl = self.batch = self.preds = self.loss = self.loss_parts = None
        self.loss_metrics: dict = {}
        # What callbacks set for others to read (each puts back its default when it is removed):
        self.epoch_metrics: dict | None = None  # MetricsCB: the row of the epoch phase that just ended
        self.recorder = None  # Recorder: itself, for `learn.recorder.plot_loss()`
        self.trial_fit = False  # LRFinderCB: True during its fit, a trial whose rows ProgressCB does not show
        # Printing and saving callbacks act only where it is True. AccelerateCB sets it from its Accelerator.
        self.is_main_process = is_main_process()
        # AccelerateCB: True while each process sees only its share of the pass (training under several
        # processes), so that sums over the pass are added up across processes (MetricsCB).
        self.pass_is_sharded = False
        # AccelerateCB: the loss scaler of float16 training (None otherwise); checkpoints keep its state.
        self.grad_scaler = None
        # The step owner's (AccelerateCB's under Accelerate): what turns each micro-batch's loss into the
        # step's exact gradient, for every owner of backward to call, and whether this micro-batch ends a step.
        self.gradients, self.ends_step = StepGradients(), True
        self.position = TrainingPosition()
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
        """Remove callbacks: instances, or every callback of a given class. Each removed callback's
        `removed(learn)` runs (highest order first), so it can put back what it replaced."""
        gone = []
        for cb in L(cbs):
            gone += [c for c in self.cbs if c is cb or (isinstance(cb, type) and isinstance(c, cb))]
            self.cbs = [c for c in self.cbs if all(c is not g for g in gone)]
        self._build_dispatch()
        for cb in sorted(gone, key=lambda cb: cb.order, reverse=True):
            cb.removed(self)

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
        self._owners: dict[str, Callback | None] = {s: method_owner(ordered, s) for s in STEPS}
        # What each event or step runs, as (name, handler, callback) triples; a step runs like an event
        # with one handler, its owner's method. A batch runs its names' triples end to end, so an event
        # nobody listens to adds nothing to it.
        self._plans = {e: tuple((e, getattr(cb, e), cb) for cb in listeners(ordered, e)) for e in EVENTS}
        self._plans.update({s: ((s, getattr(cb, s) if cb else _no_owner(s), cb),) for s, cb in self._owners.items()})
        self._batch_plans = {training: sum((self._plans[n] for n in (TRAIN_BATCH if training else VALID_BATCH)), ())
                             for training in (True, False)}

    @property
    def step_owners(self) -> dict[str, Callback | None]:
        """The callback that owns each step now (None where no callback defines it)."""
        return dict(self._owners)

    def callback(self, event: str) -> None:
        """Run the `event` method of every callback that has one, in `order` (for a step, the method of
        its owner). An exception (other than the Cancel* ones) gets a note saying where it came from."""
        try:
            plan = self._plans[event]
        except KeyError:
            raise UnknownEventError(f"unknown event {event!r}; the events are {EVENTS}") from None
        self._run(plan)

    def _run(self, plan: tuple[tuple[str, Callable, Callback | None], ...]) -> None:
        try:  # costs nothing until something raises (Python 3.11)
            for name, handler, cb in plan:
                handler(self)
        except _CANCELS:
            raise
        except Exception as exc:
            if self.loss is None and name in _AFTER_GET_LOSS:  # the None failed here; its cause was get_loss
                raise loss_left_unset(self) from exc
            exc.add_note(loop_note(cb.name if cb else None, name, name in STEPS, where_in_fit(self, name)))
            raise

    def show_cbs(self) -> None:
        """Print which callback owns each step and which callbacks listen to each event."""
        print(dispatch_table(self.cbs))

    # ---- the five steps: each runs in the one callback that owns it -----------------------------

    def predict(self) -> None: self.callback("predict")
    def get_loss(self) -> None: self.callback("get_loss")
    def backward(self) -> None: self.callback("backward")
    def step(self) -> None: self.callback("step")
    def zero_grad(self) -> None: self.callback("zero_grad")

    # ---- losses over log-probabilities, a batch at a time (Tinker style) ----------------------

    @delegates(forward_backward_custom)
    def forward_backward_custom(self, batch: Mapping, fn: LogprobLossFn, **kwargs) -> CustomLossResult:
        """Tinker's `forward_backward_custom`: `fn(batch, logprobs)`'s gradient left in the parameters
        (`minilearn.logprobs.forward_backward`); `optim_step()` applies it."""
        return forward_backward_custom(self, batch, fn, **kwargs)

    def optim_step(self) -> None:
        """Apply the gradients in the parameters and clear them (the `step` and `zero_grad` steps)."""
        self.create_opt()
        self.step()
        self.zero_grad()

    def create_opt(self, fresh: bool = False) -> torch.optim.Optimizer:
        """The optimizer, built by `opt_func(model.parameters(), lr=lr)` if there is none yet (or `fresh`):
        the one place one is built (by `fit`, `optim_step`, `load`)."""
        if self.opt is None or fresh:
            self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
        return self.opt

    # ---- the loop -------------------------------------------------------------------------------

    def _with_events(self, name: str, body: Callable[[], None], cancel: type[Exception]) -> None:
        # A cancel exception skips the rest of `body` (or of before_*), then after_* runs;
        # cleanup_* runs whatever happened.
        before, after, cleanup = _PHASE_EVENTS[name]  # built once: this runs for every batch
        try:
            try:
                self._run(self._plans[before])
                body()
            except cancel:
                pass
            self._run(self._plans[after])
        except cancel:
            pass
        finally:
            self._run(self._plans[cleanup])

    def _one_batch(self) -> None:
        # predict, after_predict, get_loss, after_loss, and when training backward, after_backward,
        # step, after_step, zero_grad (minilearn.events.TRAIN_BATCH)
        self._run(self._batch_plans[self.training])

    def _one_epoch(self) -> None:
        # A training pass goes through `position`, so that a checkpoint can resume it in the middle.
        for self.iter, self.batch in self.position.batches(self) if self.training else enumerate(self.dl):
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

    def _fit(self, train: bool, valid: bool, resumer: Resume | None) -> None:
        if resumer:  # now that every callback's before_fit has run (schedules built, AccelerateCB prepared)
            resumer.restore(self)
        for self.epoch in self.epochs:
            if train: self.one_epoch(True)
            if valid: self.one_epoch(False)

    def fit(self, n_epochs: int = 1, cbs: CallbackArg = None, lr: float | None = None, train: bool = True,
            valid: bool = True, reset_opt: bool = False, resume: str | os.PathLike | None = None) -> None:
        """Train for `n_epochs`, each a training pass then a validation pass.

        `cbs` are added for this call only, and leave the learner as they found it (`Callback.removed`).
        `lr` replaces `learn.lr`; every fit starts at `learn.lr` (a schedule then sets it batch by batch).
        The optimizer is kept between calls (momentum and all); `reset_opt=True` builds a fresh one.
        `resume`: a checkpoint saved (`save`, `SaveModelCB`) during a fit called like this one (same
        `n_epochs`, data and callbacks); it goes on from there, also mid-epoch, and ends with the weights
        the uninterrupted fit would have had, bit for bit (with deterministic ops).
        """
        if not isinstance(n_epochs, int) or n_epochs < 0:
            raise ValueError(f"n_epochs must be a whole number >= 0, got {n_epochs!r}")
        resumer = Resume(resume) if resume is not None else None  # read and checked before anything changes
        was_training = self.model.training
        with self.added_cbs(cbs):
            try:
                if lr is not None:
                    self.lr = lr
                for group in self.create_opt(fresh=reset_opt).param_groups:
                    group["lr"] = self.lr
                self.n_epochs, self.epochs = n_epochs, range(resumer.first_epoch if resumer else 0, n_epochs)
                self._with_events("fit", lambda: self._fit(train, valid, resumer), CancelFitException)
            finally:
                self.position.forget_resume()  # a resume the fit ended before reaching
                self.model.train(was_training)
                # A fit stopped between backward and zero_grad would leave gradients for the next one to add to.
                self.model.zero_grad(set_to_none=True)

    # ---- checkpoints and tools built on fit: each delegates to the module that does the work ----------

    def save(self, path: str | os.PathLike, with_opt: bool = True) -> Path:
        """Save a checkpoint directory at `path`, atomically, for `load` or `fit(resume=path)`: weights,
        optimizer (when `with_opt`), callbacks' states, position in the fit, random states
        (`minilearn.checkpoints.learner_state.save_learner`)."""
        return save_learner(self, path, with_opt)

    def load(self, path: str | os.PathLike, with_opt: bool = True) -> None:
        """Load a checkpoint written by `save`, or raise `CheckpointError` changing nothing
        (`minilearn.checkpoints.learner_state.load_learner`)."""
        load_learner(self, path, with_opt)

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """`model` without the wrappers a launcher puts around it (DDP, FSDP, DeepSpeed, `torch.compile`):
        the user's own module, whose weights a checkpoint holds. `model` itself when there are none."""
        return extract_model_from_parallel(self.model)

    def get_preds(self, dl: Any = None, with_loss: bool = False) -> Predictions:
        """The model outputs over `dl` (default `dls.valid`) in dataset order, concatenated (sequence
        dimensions padded where batches differ), with `targets` (the non-model part of each batch) and,
        with `with_loss=True`, one loss per item, computed by the loss's owner on each item alone.
        Runs in eval mode under no_grad with the callbacks that own `predict` and `get_loss` (AccelerateCB
        gathers every process's share: each process gets the whole set), and leaves the learner as it was.

        `Predictions(preds, targets, losses)`; see `minilearn.predictions`."""
        return get_preds(self, dl, with_loss)

    def top_losses(self, k: int = 9, dl: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(indices, losses)` of the `k` items of `dl` (default `dls.valid`) with the largest loss."""
        return top_losses(self, k, dl)

    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                show_plot: bool = True) -> SuggestedLRs:
        """The learning-rate range test (`minilearn.lr_finder.lr_find`); returns `SuggestedLRs`, the lr
        each of fastai's rules reads off the loss curve (`.steep` is the one to try first)."""
        return lr_find(self, start_lr, end_lr, num_it, show_plot)

    def show_batch(self, dl: Any = None, n: int = 9, show: Callable | None = None, vocab: list[str] | None = None):
        """Draw the first `n` items of a batch of `dl` (default `dls.train`) captioned with their targets:
        images `(N, H, W)`/`(N, C, H, W)` as a grid, `(N, F)` rows as a table, or through your own
        `show(xs, captions) -> Figure` (`minilearn.show.show_batch`). Returns the figure."""
        return show_batch(self, dl, n, show, vocab)
