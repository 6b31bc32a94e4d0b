"""SaveModelCB: a checkpoint at the end of each epoch, or when the monitored metric improves."""

import os
from pathlib import Path

from minilearn.callback import Callback
from minilearn.callbacks.monitor import Monitor
from minilearn.checkpoints.files import is_checkpoint, remove_checkpoint
from minilearn.order import Order

__all__ = ["SaveModelCB"]


class SaveModelCB(Callback):
    """Save a checkpoint (`learn.save`) as `path/epoch-NNNN` when `monitor` improves (MetricsCB must
    be there to measure it) or, with `every_epoch=True`, after every epoch; keep the `keep` newest.

    Saving is atomic: a run killed during a save keeps its previous checkpoints, and a directory left
    half-written is not counted as one. Resume a killed fit with the same callbacks:
    `learn.fit(n, cbs=cb, resume=cb.latest)` (`latest` is None when there is nothing to resume).
    Under several processes the main process writes, with every process's random states.

    >>> import tempfile
    >>> cb = SaveModelCB(every_epoch=True, keep=2, path=tempfile.mkdtemp())
    >>> cb.latest is None
    True
    """

    order = Order.SAVE_MODEL

    def __init__(self, monitor: str = "valid_loss", every_epoch: bool = False, keep: int = 2,
                 path: str | os.PathLike = "checkpoints", mode: str = "min", with_opt: bool = True):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a whole number >= 1, got {keep!r}")
        self.monitor, self.every_epoch, self.keep = Monitor(monitor, mode), every_epoch, keep
        self.path, self.with_opt = Path(path), with_opt

    def before_fit(self, learn):
        self.monitor.best = None

    def after_epoch(self, learn):
        if not self.monitor.at_phase_end(learn):
            return
        improved = self.monitor.update(self.monitor.value(learn)) if not self.every_epoch else True
        if not improved:
            return
        learn.save(self.path / f"epoch-{learn.epoch:04d}", with_opt=self.with_opt)  # every process: see Learner.save
        if learn.is_main_process:
            for old in self.checkpoints()[:-self.keep]:
                remove_checkpoint(old)

    def checkpoints(self) -> list[Path]:
        """The complete checkpoints under `path`, oldest first."""
        return sorted(p for p in self.path.glob("epoch-*") if is_checkpoint(p))

    @property
    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def state_dict(self) -> dict:
        """The best value so far, kept in checkpoints so that a resumed fit saves when this one would."""
        return {"best": self.monitor.best}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` gave."""
        self.monitor.best = state["best"]
