"""Exceptions a callback raises to steer the loop, the errors minilearn raises on bad input, and the
note the loop adds to an exception to say where it came from."""

import re
from typing import NamedTuple

import torch

from minilearn.data import describe

__all__ = [
    "CancelFitException", "CancelEpochException", "CancelBatchException",
    "UnknownEventError", "MissingInputError", "LossOutputError", "CheckpointError", "RaisedBy", "loop_note",
    "where_in_fit", "raised_by", "loss_left_unset",
]


class CancelFitException(Exception):
    """Raise in a callback to stop `fit`: `after_fit` and `cleanup_fit` still run."""


class CancelEpochException(Exception):
    """Raise in a callback to end the current epoch (train or valid phase): `after_epoch` and
    `cleanup_epoch` still run, then the loop goes on with the next phase."""


class CancelBatchException(Exception):
    """Raise in a callback to skip the rest of the current batch: `after_batch` and
    `cleanup_batch` still run, then the loop goes on with the next batch."""


class UnknownEventError(ValueError):
    """An event name that is not in `minilearn.EVENTS` was asked for."""


class MissingInputError(KeyError):
    """A loss, metric or model asked for an input (by parameter name) that the batch does not have."""

    def __str__(self) -> str:
        # KeyError's own __str__ wraps the message in quotes; a sentence reads better without them.
        return str(self.args[0]) if self.args else ""


class LossOutputError(TypeError):
    """A loss returned something other than a scalar tensor or `(scalar, metrics_dict)`."""


class CheckpointError(ValueError):
    """A checkpoint could not be used: missing, corrupted, holding pickled objects, or not matching
    the model and optimizer it is loaded into. The message names the file."""



# The note's format, written by `loop_note` and read back by `raised_by`: in one place, so they agree.
_NOTE = "minilearn: raised by {who} at {event}{where}"
_NOTE_READER = re.compile(r"minilearn: raised by (?:callback (?P<cb>\S+)|the step \w+ \(owned by (?P<owner>[^)]+)\)) "
                          r"at (?P<event>\w+)")


class RaisedBy(NamedTuple):
    """Where in the loop an exception came from: the callback's name (None for a step nobody owns)
    and the event or step it was running."""

    callback: str | None
    event: str


def loop_note(callback: str | None, event: str, is_step: bool, where: str = "") -> str:
    """The note the Learner adds to an exception raised inside the loop (other than the Cancel* ones):
    which callback raised it (`None` for a step nobody owns), at which event or step, and `where` in
    the fit (epoch, phase, batch).

    >>> loop_note("MetricsCB", "after_loss", False, " in epoch 0 (training batch 3)")
    'minilearn: raised by callback MetricsCB at after_loss in epoch 0 (training batch 3)'
    """
    who = f"the step {event} (owned by {callback or 'no callback'})" if is_step else f"callback {callback}"
    return _NOTE.format(who=who, event=event, where=where)


def where_in_fit(learn, event: str) -> str:
    """Where `learn` is in its fit, for the note of an exception raised at `event`: the epoch, the
    phase and batch (with the batch's shapes), and the model output's shapes once there is one."""
    where = ""
    if not event.endswith("_fit"):
        where = f" in epoch {learn.epoch} ({'training' if learn.training else 'validation'}"
        where += ")" if event.endswith("_epoch") else f" batch {learn.iter}; batch: {describe(learn.batch)})"
    if event in ("get_loss", "after_predict", "after_loss") and learn.preds is not None:
        where += f"; model output: {describe(learn.preds)}"
    return where


def raised_by(exc: BaseException) -> RaisedBy | None:
    """Where in the loop `exc` came from, read from the note `loop_note` wrote (the innermost one, when
    a fit run inside a callback added more), or None when the loop added none.

    >>> exc = ValueError("bad")
    >>> exc.add_note(loop_note("LossCB", "get_loss", True))
    >>> raised_by(exc), raised_by(ValueError("no note"))
    (RaisedBy(callback='LossCB', event='get_loss'), None)
    """
    for note in getattr(exc, "__notes__", ()):
        if found := _NOTE_READER.match(note):
            owner = found["cb"] or found["owner"]
            return RaisedBy(None if owner == "no callback" else owner, found["event"])
    return None


def loss_left_unset(learn) -> LossOutputError:
    """The error for a batch whose owner of `get_loss` left `learn.loss` None: the Learner raises it
    (from the error it caused) when something after `get_loss` fails while `learn.loss` is None, so
    that the message names the owner rather than the callback that tripped over the None. The note
    says the owner raised it at get_loss."""
    owner = learn.step_owners["get_loss"]
    kept = isinstance(getattr(owner, "loss", None), torch.Tensor)
    err = LossOutputError(f"{owner.name}.get_loss left learn.loss unset (None)"
                          + (f"; it set {owner.name}.loss, a tensor, instead" if kept else "")
                          + ": the owner of get_loss sets learn.loss to the loss of the batch, a 0-dim tensor, "
                          "which backward, metrics and progress read")
    err.add_note(loop_note(owner.name, "get_loss", True, where_in_fit(learn, "get_loss")))
    return err
