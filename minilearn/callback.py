"""The base class of every callback."""

import difflib
import warnings

from minilearn.events import EVENTS, STEPS

__all__ = ["Callback", "misspelt_events", "warn_misspelt_events"]

_EVENT_PREFIXES = ("before_", "after_", "cleanup_")


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

    def __repr__(self) -> str:
        return f"{self.name}(order={self.order})"


def misspelt_events(cb: Callback) -> dict[str, str | None]:
    """Methods of `cb` that look like events but are not: `{method_name: nearest real event}`.

    >>> class Typo(Callback):
    ...     def after_batchs(self, learn): pass
    >>> misspelt_events(Typo())
    {'after_batchs': 'after_batch'}
    """
    found = {}
    for attr in dir(type(cb)):
        if attr.startswith(_EVENT_PREFIXES) and attr not in EVENTS and callable(getattr(cb, attr)):
            close = difflib.get_close_matches(attr, EVENTS + STEPS, n=1)
            found[attr] = close[0] if close else None
    return found


def warn_misspelt_events(cb: Callback) -> None:
    """Warn about each method of `cb` that looks like an event name but is not one (it would never run)."""
    for attr, near in misspelt_events(cb).items():
        hint = f"; did you mean {near!r}?" if near else ""
        warnings.warn(f"{cb.name}.{attr} looks like an event but is not one, so it will never run{hint}",
                      stacklevel=3)
