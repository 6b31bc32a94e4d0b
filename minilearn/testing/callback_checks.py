"""check_callback: run a callback in a short fit on a tiny Learner and report, check by check, whether it
speaks the loop's language, which steps it takes over, and whether it leaves the loop as it found it."""

import copy
import inspect
import warnings
from itertools import islice
from typing import Any

import torch

from minilearn.callback import Callback, MisspeltEventWarning, misspelt_events
from minilearn.data import DataLoaders
from minilearn.events import EVENTS, STEPS
from minilearn.exceptions import raised_by
from minilearn.learner import Learner
from minilearn.order import Order
from minilearn.testing.fingerprint import learner_fingerprint, left_behind
from minilearn.testing.report import CheckReport
from minilearn.testing.tiny import tiny_learner

__all__ = ["check_callback"]

_BATCH_PHASE = {"before_batch", "after_batch", "cleanup_batch", "after_predict", "after_loss", "after_backward",
                "after_step", *STEPS}


def _phase(learn: Learner) -> str:
    return "training" if learn.training else "validation"


def _check_events(report: CheckReport, cb: Callback) -> None:
    if wrong := misspelt_events(cb):
        report.add("events", False, "; ".join(
            f"{cb.name}.{m} is not an event, so it never runs" + (f" (did you mean {near!r}?)" if near else "")
            for m, near in wrong.items()))
    else:
        listens = [e for e in EVENTS if callable(getattr(cb, e, None))]
        report.add("events", True, f"listens to {', '.join(listens)}" if listens else "listens to no event")


def _takes_the_learner(method: Any) -> bool:
    try:
        inspect.signature(method).bind(None)
    except TypeError:
        return False
    except ValueError:  # no readable signature (a builtin): let the fit find out
        pass
    return True


def _check_signatures(report: CheckReport, cb: Callback) -> None:
    wrong = [n for n in EVENTS + STEPS if callable(getattr(cb, n, None)) and not _takes_the_learner(getattr(cb, n))]
    rule = "every event and step method takes the learner"
    names = ", ".join(f"{cb.name}.{n}" for n in wrong)
    report.add("signatures", not wrong, f"{names} cannot be called as method(learn): {rule}" if wrong else rule)


def _owner(cb: Callback | None) -> str:
    return f"{cb.name} (order {cb.order})" if cb else "no callback"


def _check_steps(report: CheckReport, cb: Callback, learn: Learner) -> None:
    before = learn.step_owners
    with learn.added_cbs(cb):
        during = learn.step_owners
    defined = [s for s in STEPS if callable(getattr(cb, s, None))]
    if shadowed := [s for s in defined if during[s] is not cb]:
        report.add("steps", False, "; ".join(
            f"defines {s} but {_owner(during[s])} owns it, so {cb.name}.{s} never runs: give {cb.name} an order "
            f"above {during[s].order} to take it over" for s in shadowed))
    else:
        report.add("steps", True, "; ".join(f"takes over {s} from {_owner(before[s])}" for s in defined)
                   or "takes over no step")


class _LoopObserver(Callback):
    """Runs after every other callback at each event of a batch: keeps the first time the model's mode or
    the gradient switch disagrees with the phase, and what training computed (each batch's loss and
    gradients, the weights after the fit), to compare with a fit without the callback."""

    order = Order.CHECK_RECORDER

    def __init__(self):
        self.broken: dict[str, str] = {}
        self.batches_seen = 0
        self.computed: dict[str, list[tuple[str, torch.Tensor]]] = {"loss": [], "gradients": [], "weights": []}

    def _look(self, learn: Learner, event: str) -> None:
        if learn.model.training != learn.training and "mode" not in self.broken:
            mode = "eval" if learn.training else "train"
            self.broken["mode"] = (f"the model was in {mode} mode at {event} of a {_phase(learn)} batch; a callback "
                                   f"that switches it must switch it back before the batch ends")
        if torch.is_grad_enabled() != learn.training and "grad" not in self.broken:
            state = "off" if learn.training else "on"
            self.broken["grad"] = f"gradients were {state} at {event} of a {_phase(learn)} batch"

    def before_batch(self, learn):
        self.batches_seen += 1
        self._look(learn, "before_batch")

    def after_predict(self, learn): self._look(learn, "after_predict")
    def after_step(self, learn): self._look(learn, "after_step")
    def after_batch(self, learn): self._look(learn, "after_batch")

    def after_loss(self, learn):
        self._look(learn, "after_loss")
        self.computed["loss"].append((f"the loss of {_phase(learn)} batch {learn.iter}",
                                      torch.as_tensor(learn.loss).detach().clone()))

    def after_backward(self, learn):
        self._look(learn, "after_backward")
        self.computed["gradients"] += [(f"the gradient of {name} at training batch {learn.iter}",
                                        p.grad.detach().clone())
                                       for name, p in learn.model.named_parameters() if p.grad is not None]

    def after_fit(self, learn):
        self.computed["weights"] = [(f"{name} after the fit", p.detach().clone())
                                    for name, p in learn.model.named_parameters()]


def _fit_without(learn: Learner) -> _LoopObserver:
    """What the same fit computes without the callback under test, from the same weights, optimizer
    state and random state, which are put back afterwards."""
    weights, opt_state = copy.deepcopy(learn.model.state_dict()), copy.deepcopy(learn.opt.state_dict())
    observer = _LoopObserver()
    try:
        with torch.random.fork_rng():
            learn.fit(1, cbs=observer)
    finally:
        learn.model.load_state_dict(weights)
        learn.opt.load_state_dict(opt_state)
    return observer


def _change(name: str, without: torch.Tensor, with_cb: torch.Tensor) -> str | None:
    """How `with_cb` differs from `without`, in words, or None when they agree to float64 rounding."""
    if without.shape != with_cb.shape:
        return f"{name} is {tuple(with_cb.shape)} with it, {tuple(without.shape)} without"
    gap, scale = (with_cb.double() - without.double()).abs().max().item(), without.double().abs().max().item()
    if gap <= 1e-6 * scale + 1e-12:
        return None
    if without.numel() == 1:
        return f"{name} is {with_cb.item():.6g} with it, {without.item():.6g} without"
    return f"{name} differs by up to {gap:.3g}, " + (f"{100 * gap / scale:.2g}% of its largest value" if scale else
                                                     "where it is 0 without")


def _changes(without: _LoopObserver, with_cb: _LoopObserver) -> list[str]:
    """The first change of the loss, of the gradients and of the weights, in words."""
    found = []
    for kind, computed in without.computed.items():
        theirs = with_cb.computed[kind]
        if [name for name, _ in theirs] != [name for name, _ in computed]:
            found.append(f"{kind}: {len(theirs)} values with it, {len(computed)} without")
            continue
        found += [c for c in (_change(name, a, b) for (name, a), (_, b) in zip(computed, theirs)) if c][:1]
    return found


def _origin(exc: BaseException, learn: Learner) -> str:
    """Where in the loop `exc` came from, read from the note the Learner adds to it."""
    origin = raised_by(exc)
    event = origin.event if origin else None
    method = f"{origin.callback}.{event}" if origin and origin.callback else None
    where = f"during {event}" if event else "in fit"
    if event in _BATCH_PHASE:
        where += f" of {_phase(learn)} batch {learn.iter}"
    return f"{method or 'fit'} raised {type(exc).__name__}: {exc} ({where})"


def _check_observes(report: CheckReport, cb: Callback, without: _LoopObserver | str, with_cb: _LoopObserver,
                    fit_ran: bool) -> None:
    if isinstance(without, str):
        report.add("observes", False, without)
    elif not fit_ran:
        report.add("observes", None, f"the fit with {cb.name} did not run to its end")
    elif changes := _changes(without, with_cb):
        report.add("observes", False, f"{cb.name} changes what training computes, against the same fit without it: "
                                      f"{'; '.join(changes)}; a callback that only observes must not write the loss, "
                                      f"p.grad or the weights (torch.nn.utils.clip_grad_norm_, for one, clips p.grad "
                                      f"in place)")
    else:
        report.add("observes", True, "the losses, gradients and weights of the fit are those of the same fit "
                                     "without it")


def _check_fit(report: CheckReport, cb: Callback, learn: Learner, observes: bool) -> None:
    observer = _LoopObserver()
    if learn.opt is None:
        learn.fit(0)  # builds the optimizer, so that what the callback does to it can be seen
    dls = learn.dls
    learn.dls = DataLoaders(list(islice(dls.train, 2)), list(islice(dls.valid, 1)))
    before = learner_fingerprint(learn)
    try:
        without = _fit_without(learn) if observes else None
    except Exception as e:
        without = (f"the same fit without {cb.name} raised {type(e).__name__}: {e}; check the learner without the "
                   f"callback first")
    try:
        learn.fit(1, cbs=[cb, observer])
        report.add("fit", True, "a fit of two training batches and one validation batch ran")
        fit_ran = True
    except Exception as e:
        report.add("fit", False, _origin(e, learn))
        fit_ran = False
    changed = left_behind(before, learner_fingerprint(learn))
    learn.dls = dls
    if observes:
        _check_observes(report, cb, without, observer, fit_ran)
    if observer.broken:
        report.add("invariants", False, "; ".join(observer.broken.values()))
    elif observer.batches_seen:
        report.add("invariants", True, "the model trained in training batches and evaluated in validation ones, "
                                       "with gradients on only while training")
    else:
        report.add("invariants", None, "the fit ended before any batch")
    report.add("restored", not changed,
               "; ".join(changed) + ": undo in cleanup_fit what the callback changed during fit (or, for what it "
               "keeps while it stays, in removed)" if changed else "the learner, its model, optimizer settings, "
               "data and torch's gradient and autocast switches are as before fit")


def check_callback(cb: Callback, learn: Learner | None = None, observes: bool = False) -> CheckReport:
    """Check a callback and report each check with pass/fail and a one-line explanation:

    - `events`: no method looks like an event or step but is not one (`after_batchs`), with the nearest name;
    - `signatures`: every event and step method can be called as `method(learn)`;
    - `steps`: which steps it takes over, from which callback, and none it defines is shadowed;
    - `fit`: a fit of two training batches and one validation batch with it runs;
    - `observes` (with `observes=True`, for a callback that must only watch training): the losses,
      gradients and weights are those of the same fit without it;
    - `invariants`: at each event of a batch the model is in train mode with gradients on in training
      batches, and in eval mode without in validation ones;
    - `restored`: after the fit the learner is as it was (`learner_fingerprint`).

    `learn`: the Learner to run it on (default: `tiny_learner()`). It is trained for those two
    batches and keeps its data loaders; pass a fresh one. `cb` is added for the fit only.

    >>> class PrintLoss(Callback):
    ...     def after_batchs(self, learn): print(learn.loss)
    >>> report = check_callback(PrintLoss())
    >>> bool(report), report.failed[0].explanation
    (False, "PrintLoss.after_batchs is not an event, so it never runs (did you mean 'after_batch'?)")
    """
    if not isinstance(cb, Callback):
        raise TypeError(f"check_callback checks a Callback instance, got {cb!r} of type {type(cb).__name__}"
                        + (" (a class: pass an instance, cb=MyCallback())" if isinstance(cb, type) else ""))
    learn = tiny_learner() if learn is None else learn
    report = CheckReport(f"check_callback({cb.name})")
    _check_events(report, cb)
    _check_signatures(report, cb)
    with warnings.catch_warnings():
        # Adding `cb` warns about misspelt events, which the `events` check reports already.
        warnings.simplefilter("ignore", MisspeltEventWarning)
        _check_steps(report, cb, learn)
        _check_fit(report, cb, learn, observes)
    return report
