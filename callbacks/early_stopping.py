"""EarlyStoppingCB: stop the fit when the monitored metric stops improving."""

from minilearn.callback import Callback
from minilearn.callbacks.monitor import Monitor
from minilearn.exceptions import CancelFitException
from minilearn.order import Order

__all__ = ["EarlyStoppingCB"]


class EarlyStoppingCB(Callback):
    """Cancel the fit after `patience` epochs in a row in which `monitor` did not improve on its best
    by more than `min_delta` (`mode="max"` for metrics where higher is better). Needs MetricsCB.
    The reason is printed and kept on `self.message`.

    >>> cb = EarlyStoppingCB("valid_loss", patience=2, min_delta=1e-3)
    """

    order = Order.EARLY_STOPPING

    def __init__(self, monitor: str = "valid_loss", patience: int = 3, min_delta: float = 0.0, mode: str = "min"):
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a whole number >= 1, got {patience!r}")
        self.monitor, self.patience = Monitor(monitor, mode, min_delta), patience
        self.wait, self.message = 0, None

    def before_fit(self, learn):
        self.monitor.best, self.wait, self.message = None, 0, None

    def after_epoch(self, learn):
        if not self.monitor.at_phase_end(learn):
            return
        if self.monitor.update(self.monitor.value(learn)):
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.message = (f"EarlyStoppingCB: {self.monitor.name} has not improved on {self.monitor.best} by more than "
                            f"{self.monitor.min_delta} for {self.patience} epochs; stopped after epoch {learn.epoch}")
            if learn.is_main_process:
                print(self.message)
            raise CancelFitException()

    def state_dict(self) -> dict:
        """The best value and the epochs waited, kept in checkpoints so that a resumed fit stops when this one would."""
        return {"best": self.monitor.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` gave."""
        self.monitor.best, self.wait = state["best"], state["wait"]
