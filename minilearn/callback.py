"""The base class of every callback."""

import difflib
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from minilearn.events import EVENTS, STEPS

__all__ = ["Callback", "listeners", "method_owner", "dispatch_table", "misspelt_events", "warn_misspelt_events",
           "MisspeltEventWarning", "FASTAI_EVENTS", "replacing"]

_EVENT_PREFIXES = ("before_", "after_", "cleanup_")

# fastai's events (fastai.callback.core) that minilearn names otherwise: what minilearn calls each, and when.
FASTAI_EVENTS: dict[str, tuple[str, str]] = {
    "after_create": ("before_fit", "the nearest: no event runs when a callback joins a learner"),
    "before_train": ("before_epoch", "with learn.training True"),
    "after_train": ("after_epoch", "with learn.training True"),
    "before_validate": ("before_epoch", "with learn.training False"),
    "after_validate": ("after_epoch", "with learn.training False"),
    "after_pred": ("after_predict", ""),
    "before_backward": ("after_loss", "with learn.training True"),
    "before_step": ("after_backward", ""),
    "after_cancel_batch": ("after_batch", "it runs also after a CancelBatchException"),
    "after_cancel_train": ("after_epoch", "it runs also after a CancelEpochException"),
    "after_cancel_validate": ("after_epoch", "it runs also after a CancelEpochException"),
    "after_cancel_epoch": ("after_epoch", "it runs also after a CancelEpochException"),
    "after_cancel_fit": ("after_fit", "it runs also after a CancelFitException"),
}


class Callback:
    """A piece of the training loop. Subclass it and define methods named after events
    (`before_fit`, `after_loss`, ... see `minilearn.EVENTS`) or steps (`predict`, `get_loss`,
    `backward`, `step`, `zero_grad`). Each method takes the learner as its only argument.

    Event methods of every callback run, sorted by `order` (lower first). A step runs in exactly
    one callback: the one with the highest `order` that defines it.

    >>> class PrintEpoch(Callback):
    ...     def after_epoch(self, learn): print(learn.epoch, learn.training)
    """

    order: int = 0

    @property
    def name(self) -> str:
        """The class name, used in `Learner.show_cbs()` and error messages."""
        return type(self).__name__

    def removed(self, learn) -> None:
        """Called when this callback leaves `learn`: at the end of the `fit(cbs=...)` or `added_cbs`
        block it was added for, or by `learn.remove_cbs`. A callback that replaced something of the
        learner's (the model, the data loaders, the optimizer, an attribute others read) puts it back
        here, so that swapping callbacks in a notebook leaves the learner as it was. While it stays in
        `learn.cbs` it may keep what it set up (AccelerateCB keeps its prepared model across fits)."""

    def __repr__(self) -> str:
        return f"{self.name}(order={self.order})"


def listeners(cbs: Iterable[Callback], event: str) -> list[Callback]:
    """The callbacks of `cbs` that define `event`, in the order they run it (by `order`, then the
    order of adding)."""
    return [cb for cb in sorted(cbs, key=lambda cb: cb.order) if callable(getattr(cb, event, None))]


def method_owner(cbs: Iterable[Callback], method: str) -> Callback | None:
    """The callback of `cbs` that owns `method` (a step, or any method a callback may define): the one with
    the highest `order` that defines it, the last added among equals; None when none does.

    >>> class A(Callback): order = 5; step = print
    >>> class B(Callback): order = 1; step = print
    >>> method_owner([A(), B()], "step").name, method_owner([A()], "predict")
    ('A', None)
    """
    defining = listeners(cbs, method)
    return defining[-1] if defining else None


def dispatch_table(cbs: Iterable[Callback]) -> str:
    """Which callback of `cbs` owns each step and which ones listen to each event, as a table
    (`Learner.show_cbs` prints it).

    >>> class Loss(Callback): order = 10; get_loss = after_epoch = print
    >>> print(dispatch_table([Loss()]).splitlines()[2])
    get_loss    Loss (order 10)
    """
    cbs = list(cbs)
    rows = ["step        owner"]
    for s in STEPS:
        cb = method_owner(cbs, s)
        rows.append(f"{s:<11} {f'{cb.name} (order {cb.order})' if cb else '(none)'}")
    rows += ["", "event           callbacks (in order)"]
    rows += [f"{e:<15} {', '.join(f'{cb.name}({cb.order})' for cb in found)}" for e in EVENTS
             if (found := listeners(cbs, e))]
    return "\n".join(rows)


class MisspeltEventWarning(UserWarning):
    """A callback method is named like an event or a step but is not one, so it will never run."""


def misspelt_events(cb: Callback) -> dict[str, str | None]:
    """Methods of `cb` that look like events or steps but are not: `{method_name: nearest real name}`.

    A method looks like one when its name starts with `before_`, `after_` or `cleanup_`, or is a
    typo away from an event or step name (`get_losss`, `zerograd`). Either way it would never run.
    A fastai event name gets the name minilearn has for it (`FASTAI_EVENTS`).

    >>> class Typo(Callback):
    ...     def after_batchs(self, learn): pass
    ...     def get_losss(self, learn): pass
    ...     def before_train(self, learn): pass
    >>> misspelt_events(Typo())
    {'after_batchs': 'after_batch', 'before_train': 'before_epoch', 'get_losss': 'get_loss'}
    """
    names = EVENTS + STEPS
    found = {}
    for attr in dir(type(cb)):
        if attr in names or attr.startswith("_") or not callable(getattr(cb, attr)):
            continue
        if attr in FASTAI_EVENTS:
            found[attr] = FASTAI_EVENTS[attr][0]
            continue
        # 0.85 catches a letter added, dropped or swapped, and not words such as `stop` or `plot_loss`.
        typo_of = difflib.get_close_matches(attr, names, n=1, cutoff=0.85)
        if typo_of or attr.startswith(_EVENT_PREFIXES):
            close = typo_of or difflib.get_close_matches(attr, names, n=1)
            found[attr] = close[0] if close else None
    return found


def warn_misspelt_events(cb: Callback) -> None:
    """Warn about each method of `cb` that looks like an event or step name but is not one (it would never run)."""
    for attr, near in misspelt_events(cb).items():
        if attr in FASTAI_EVENTS:
            when = FASTAI_EVENTS[attr][1]
            what = f"is fastai's name for an event; minilearn calls this {near!r}" + (f" ({when})" if when else "")
        else:
            what = "looks like an event or step but is not one" + (f" (did you mean {near!r}?)" if near else "")
        warnings.warn(f"{cb.name}.{attr} {what}, so it will never run", MisspeltEventWarning, stacklevel=3)


@contextmanager
def replacing(obj: Any, **attrs: Any) -> Iterator[Any]:
    """Set attributes of `obj` (a learner) for the length of a `with` block; the old values are put back
    however the block ends, so a pass run inside a fit (or between fits) leaves the loop's state as it was.

    >>> class Box: x = 1
    >>> box = Box()
    >>> with replacing(box, x=2): print(box.x)
    2
    >>> box.x
    1
    """
    old = {name: getattr(obj, name) for name in attrs}
    for name, value in attrs.items():
        setattr(obj, name, value)
    try:
        yield obj
    finally:
        for name, value in old.items():
            setattr(obj, name, value)
