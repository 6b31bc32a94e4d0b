"""Monitor: one number of the epoch metrics, watched for improvement (by SaveModelCB and EarlyStoppingCB)."""

import math

__all__ = ["Monitor"]


class Monitor:
    """Reads `"<phase>_<name>"` from the row MetricsCB leaves on `learn.epoch_metrics` at the end of
    each epoch phase (`"valid_loss"`: the `loss` of the validation pass) and keeps the best value.

    `mode="min"` counts a value as better when it is below the best by more than `min_delta`,
    `"max"` when above. A non-finite value (NaN, inf) is never an improvement.

    >>> m = Monitor("valid_loss", min_delta=0.1)
    >>> m.update(1.0), m.update(0.95), m.update(0.5), m.best
    (True, False, True, 0.5)
    """

    def __init__(self, monitor: str = "valid_loss", mode: str = "min", min_delta: float = 0.0):
        phase, _, key = monitor.partition("_")
        if phase not in ("train", "valid") or not key:
            raise ValueError(f"monitor must be 'train_<metric>' or 'valid_<metric>' (for example 'valid_loss'), "
                             f"got {monitor!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.name, self.phase, self.key, self.mode, self.min_delta = monitor, phase, key, mode, min_delta
        self.best: float | None = None

    def at_phase_end(self, learn) -> bool:
        """True in `after_epoch` of the phase (train or valid) this monitor reads."""
        return learn.training == (self.phase == "train")

    def value(self, learn) -> float:
        """The monitored number of the epoch phase that just ended; a clear error if there is none."""
        row = learn.epoch_metrics
        if not row or row.get("phase") != self.phase or self.key not in row:
            raise ValueError(f"monitor {self.name!r} needs {self.key!r} in the epoch metrics of the {self.phase} pass, "
                             f"but learn.epoch_metrics is {row}: add MetricsCB() (it writes them), with a metric of "
                             f"that name, and a non-empty {self.phase} loader")
        return float(row[self.key])

    def update(self, value: float) -> bool:
        """Whether `value` improves on the best so far (if so, it becomes the best)."""
        if not math.isfinite(value):
            return False
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best = value
        return better
