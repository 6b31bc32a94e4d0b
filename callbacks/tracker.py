"""TrackerCB: the training loss, the learning rate and each pass's metrics sent to an experiment
tracker (TensorBoard, W&B, MLflow, Aim, Comet, ...) through Accelerate's tracker classes."""

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker

from minilearn.callback import Callback
from minilearn.order import Order

__all__ = ["TrackerCB"]


class TrackerCB(Callback):
    """Log to an experiment tracker: every `every` training batches `batch/loss` and `batch/lr` (at
    step = training batches since this callback was made, so fits share one axis), and after each
    pass its `MetricsCB` row as `train/<name>` or `valid/<name>` at step `epoch`.

    `log_with`: a name of `accelerate.tracking.LOGGER_TYPE_TO_CLASS` (its package installed) or a
    `GeneralTracker`. File trackers write to `logging_dir/run_name` (`run_name` defaults to the start
    time). Only the main process logs; the tracker is closed however the fit ends. A tracker that fails
    does not stop the fit: a warning names the failure and nothing more is logged in that fit.

    >>> TrackerCB("no_such_tracker")
    Traceback (most recent call last):
    ...
    ValueError: unknown tracker 'no_such_tracker': use one of ['aim', 'clearml', 'comet_ml', 'dvclive', 'mlflow', 'swanlab', 'tensorboard', 'trackio', 'wandb'], or pass a GeneralTracker
    """

    order = Order.TRACKER

    def __init__(self, log_with: str | GeneralTracker = "tensorboard", logging_dir: str | Path = "runs",
                 run_name: str | None = None, every: int = 1):
        if isinstance(log_with, str) and log_with not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"unknown tracker {log_with!r}: use one of {sorted(LOGGER_TYPE_TO_CLASS)}, "
                             f"or pass a GeneralTracker")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a whole number >= 1, got {every!r}")
        self.log_with, self.logging_dir, self.every = log_with, Path(logging_dir), every
        self.run_name = run_name or time.strftime("%Y%m%d-%H%M%S")
        self.tracker: GeneralTracker | None = None
        self.step = 0  # training batches seen, across fits

    def _safely(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
        except Exception as e:  # noqa: BLE001 - any failure of the tracker, not of training
            warnings.warn(f"TrackerCB: the {getattr(self.tracker, 'name', 'tracker')} tracker raised {e!r} at "
                          f"{what}; nothing more is logged in this fit, and the fit goes on", stacklevel=2)
            self._live = False

    def before_fit(self, learn):
        self._live = learn.is_main_process
        if self._live:
            if isinstance(self.log_with, GeneralTracker):
                self.tracker = self.log_with
            else:  # Accelerate's rule: a tracker that writes files takes a directory after the run's name
                cls = LOGGER_TYPE_TO_CLASS[self.log_with]
                self.tracker = cls(self.run_name, *([self.logging_dir] if cls.requires_logging_directory else []))
            self._safely("start", self.tracker.start)

    def after_batch(self, learn):
        if not learn.training:
            return
        self.step += 1
        if self._live and self.step % self.every == 0 and learn.loss is not None:
            values = {"batch/loss": learn.loss.item(), "batch/lr": learn.opt.param_groups[0]["lr"]}
            self._safely(f"training batch {self.step}", lambda: self.tracker.log(values, step=self.step))

    def after_epoch(self, learn):
        row = learn.epoch_metrics
        if not self._live or row is None:
            return
        phase = row.get("phase", "train" if learn.training else "valid")
        values = {f"{phase}/{k}": v for k, v in row.items()
                  if k not in ("epoch", "phase") and isinstance(v, (int, float)) and math.isfinite(v)}
        self._safely(f"the end of epoch {learn.epoch} ({phase})", lambda: self.tracker.log(values, step=learn.epoch))

    def cleanup_fit(self, learn):
        if self.tracker is not None and learn.is_main_process:
            self._live = True  # finish even a tracker that failed earlier: it may hold files open
            self._safely("finish", self.tracker.finish)
        self.tracker = None
