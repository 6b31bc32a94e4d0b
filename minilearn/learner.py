"""The Learner: a training loop that does nothing but call its callbacks."""

import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel
from fastcore.basics import store_attr
from fastcore.foundation import L

from minilearn.callback import Callback, warn_misspelt_events
from minilearn.logprobs.forward_backward import CustomLossResult, LogprobLossFn, forward_backward_custom
from minilearn.checkpoints.files import check_weights, read_checkpoint, save_checkpoint
from minilearn.data import describe
from minilearn.events import EVENTS, STEPS, TRAIN_BATCH, VALID_BATCH
from minilearn.exceptions import (CancelBatchException, CancelEpochException, CancelFitException, CheckpointError,
                                  UnknownEventError)
from minilearn.lr_finder import LRFinderCB
from minilearn.checkpoints.random_state import random_states
from minilearn.checkpoints.resume import ResumeCB, TrainingPosition, stateful_callbacks
from minilearn.train import TrainCB

__all__ = ["Learner"]

CallbackArg = Callback | type | Iterable | None
_PHASE_EVENTS = {p: (f"before_{p}", f"after_{p}", f"cleanup_{p}") for p in ("fit", "epoch", "batch")}
_CANCELS = (CancelBatchException, CancelEpochException, CancelFitException)


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
        # The loop's own state (minilearn.events.LOOP_STATE), set as it runs. The last batch and its
        # predictions stay after a fit, for a look at them (SingleBatchCB).
        self.epoch, self.n_epochs, self.epochs, self.iter, self.training = 0, 0, range(0), 0, False
        self.dl = self.batch = self.preds = self.loss = self.loss_parts = None
        self.loss_metrics: dict = {}
        # What callbacks set for others to read (each puts back its default when it is removed):
        self.epoch_metrics: dict | None = None  # MetricsCB: the row of the epoch phase that just ended
        self.recorder = None  # Recorder: itself, for `learn.recorder.plot_loss()`
        self.is_main_process = True  # AccelerateCB: printing callbacks print only where it is True
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
        self._owners: dict[str, Callback | None] = {s: None for s in STEPS}
        for cb in ordered:  # later (higher order) callbacks overwrite earlier ones
            for s in STEPS:
                if callable(getattr(cb, s, None)):
                    self._owners[s] = cb
        # What each event or step runs, as (name, handler, callback) triples; a step runs like an event
        # with one handler, its owner's method. A batch runs its names' triples end to end, so an event
        # nobody listens to adds nothing to it.
        self._plans = {e: tuple((e, getattr(cb, e), cb) for cb in ordered if callable(getattr(cb, e, None)))
                       for e in EVENTS}
        self._plans.update({s: ((s, getattr(cb, s) if cb else _no_owner(s), cb),) for s, cb in self._owners.items()})
        self._batch_plans = {training: sum((self._plans[n] for n in (TRAIN_BATCH if training else VALID_BATCH)), ())
                             for training in (True, False)}

    @property
    def step_owners(self) -> dict[str, Callback | None]:
        """The callback that owns each step now (None where no callback defines it)."""
        return dict(self._owners)

    def callback(self, event: str) -> None:
        """Run the `event` method of every callback that has one, in `order` (for a step, the method
        of the callback that owns it).

        An exception raised by one (other than the Cancel* ones) keeps its type and gets a note naming
        the callback, the event, and where in the fit it happened."""
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
            # check_callback reads this note back (minilearn.testing.callback_checks._LOOP_NOTE).
            owner = cb.name if cb else "no callback"
            self._add_note(exc, f"the step {name} (owned by {owner})" if name in STEPS else f"callback {owner}", name)
            raise

    def _add_note(self, exc: Exception, who: str, event: str) -> None:
        where = ""
        if not event.endswith("_fit"):
            where = f" in epoch {self.epoch} ({'training' if self.training else 'validation'}"
            batch = describe(self.batch)
            where += ")" if event.endswith("_epoch") else f" batch {self.iter}; batch: {batch})"
        if event in ("get_loss", "after_predict", "after_loss") and self.preds is not None:
            where += f"; model output: {describe(self.preds)}"
        exc.add_note(f"minilearn: raised by {who} at {event}{where}")

    def show_cbs(self) -> None:
        """Print which callback owns each step and which callbacks listen to each event."""
        print("step        owner")
        for s, cb in self._owners.items():
            print(f"{s:<11} {f'{cb.name} (order {cb.order})' if cb else '(none)'}")
        print("\nevent           callbacks (in order)")
        for e in EVENTS:
            if plan := self._plans[e]:
                print(f"{e:<15} {', '.join(f'{cb.name}({cb.order})' for _, _, cb in plan)}")

    # ---- the five steps: each runs in the one callback that owns it -----------------------------

    def predict(self) -> None: self.callback("predict")
    def get_loss(self) -> None: self.callback("get_loss")
    def backward(self) -> None: self.callback("backward")
    def step(self) -> None: self.callback("step")
    def zero_grad(self) -> None: self.callback("zero_grad")

    # ---- losses over log-probabilities, a batch at a time (Tinker style) ----------------------

    def forward_backward_custom(self, batch: dict, fn: LogprobLossFn, two_pass: bool = False,
                                micro_batch_size: int | None = None,
                                ref_model: torch.nn.Module | None = None) -> CustomLossResult:
        """Compute `fn(batch, logprobs)` and leave its gradient in the parameters; see
        `minilearn.logprobs.forward_backward.forward_backward_custom`. Apply it with `optim_step()`."""
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

    def _fit(self, train: bool, valid: bool) -> None:
        for self.epoch in self.epochs:
            if train: self.one_epoch(True)
            if valid: self.one_epoch(False)

    def fit(self, n_epochs: int = 1, cbs: CallbackArg = None, lr: float | None = None, train: bool = True,
            valid: bool = True, reset_opt: bool = False, resume: str | os.PathLike | None = None) -> None:
        """Train for `n_epochs`, each a training pass then a validation pass.

        `cbs` are added for this call only, and leave the learner as they found it (see
        `Callback.removed`). `lr` replaces `learn.lr` from now on; every fit starts with the
        optimizer's learning rate at `learn.lr` (a schedule then sets it batch by batch). The optimizer
        is kept between calls (momentum and all); `reset_opt=True` builds a fresh one.

        `resume`: a checkpoint saved (`save`, `SaveModelCB`) during a fit called like this one (same
        `n_epochs`, data and callbacks). The fit goes on from where it was saved, also mid-epoch, and
        ends with the weights the uninterrupted fit would have had, bit for bit (with deterministic
        ops). `None` starts from the beginning.
        """
        if not isinstance(n_epochs, int) or n_epochs < 0:
            raise ValueError(f"n_epochs must be a whole number >= 0, got {n_epochs!r}")
        first_epoch = 0
        if resume is not None:  # read and checked before anything changes
            state, weights = read_checkpoint(resume)
            if "opt" not in state:
                raise CheckpointError(f"the checkpoint {resume} was saved with with_opt=False: without the optimizer "
                                      f"state a fit cannot resume exactly; use learn.load(path) and fit afresh")
            first_epoch = state["position"]["epoch"]
            cbs = [*L(cbs), ResumeCB(resume, state, weights)]
        was_training = self.model.training
        with self.added_cbs(cbs):
            try:
                if lr is not None:
                    self.lr = lr
                if self.opt is None or reset_opt:
                    self.opt = self.opt_func(self.model.parameters(), lr=self.lr)
                for group in self.opt.param_groups:
                    group["lr"] = self.lr
                self.n_epochs, self.epochs = n_epochs, range(first_epoch, n_epochs)
                self._with_events("fit", lambda: self._fit(train, valid), CancelFitException)
            finally:
                self.model.train(was_training)
                # A fit stopped between backward and zero_grad would leave gradients for the next one to add to.
                self.model.zero_grad(set_to_none=True)

    # ---- checkpoints ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, with_opt: bool = True) -> Path:
        """Save a checkpoint directory at `path`: the model's weights (safetensors) and, as plain data,
        the optimizer state (when `with_opt`), the state of callbacks that keep one (schedules,
        `SaveModelCB`, `EarlyStoppingCB`), the position in the fit and the random states, so that
        `fit(..., resume=path)` continues exactly. The write is atomic: if it is interrupted, the
        checkpoint that was at `path` before is left intact.

        Called from a callback, it records the fit's position: within a training batch, that batch
        counts as done; after the training pass, the fit resumes at the next epoch.

        >>> import tempfile
        >>> from minilearn import DataLoaders
        >>> learn = Learner(torch.nn.Linear(2, 1), DataLoaders([], []), torch.nn.functional.mse_loss)
        >>> path = learn.save(Path(tempfile.mkdtemp()) / "ckpt")
        >>> learn.load(path)
        """
        state = {"position": self.position.resume_point(self.epoch, self.training),
                 "random": random_states(self.dls.train),
                 "callbacks": {k: cb.state_dict() for k, cb in stateful_callbacks(self.cbs).items()}}
        if with_opt and self.opt is not None:
            state["opt"] = self.opt.state_dict()
        return save_checkpoint(path, self.unwrapped_model, state)

    def load(self, path: str | os.PathLike, with_opt: bool = True) -> None:
        """Load a checkpoint written by `save`: the weights, the optimizer state (when `with_opt`; the
        optimizer is built if there is none yet) and the state of the callbacks present that keep one.
        Raises `CheckpointError`, changing nothing, when the checkpoint is missing, corrupted, holds
        pickled objects, or does not fit the model or optimizer."""
        self.restore(*read_checkpoint(path), path, with_opt)

    def restore(self, state: dict, weights: dict, source: str | os.PathLike, with_opt: bool = True) -> None:
        """Put a checkpoint read by `minilearn.checkpoints.files.read_checkpoint` into the learner (see `load`)."""
        model = self.unwrapped_model
        check_weights(model, weights, source)
        if with_opt and "opt" in state:
            opt = self.opt or self.opt_func(model.parameters(), lr=self.lr)
            try:
                opt.load_state_dict(state["opt"])  # checks the parameter groups before it changes anything
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"the optimizer state in {source} does not fit {type(opt).__name__}: {e}") from None
            self.opt = opt
        model.load_state_dict(weights, strict=False)  # checked above; tied weights are stored once
        cb_states = state.get("callbacks", {})
        for key, cb in stateful_callbacks(self.cbs).items():
            if key in cb_states:
                cb.load_state_dict(cb_states[key])

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        """`model` without the wrappers a launcher puts around it (DDP, FSDP, DeepSpeed, `torch.compile`):
        the user's own module, whose weights a checkpoint holds. `model` itself when there are none."""
        return extract_model_from_parallel(self.model)

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
