"""Exceptions a callback raises to steer the loop, and the errors minilearn raises on bad input."""

__all__ = [
    "CancelFitException", "CancelEpochException", "CancelBatchException",
    "UnknownEventError", "MissingInputError", "LossOutputError", "CheckpointError",
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
