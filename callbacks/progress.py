"""ProgressCB: progress bars, the epoch table and (in a notebook) a live loss plot, via fastprogress."""

import sys
import time

from fastprogress.core import IN_NOTEBOOK
from fastprogress.fastprogress import master_bar, progress_bar

from minilearn.callback import Callback
from minilearn.order import Order

__all__ = ["ProgressCB"]


class ProgressCB(Callback):
    """Show a bar over epochs, a bar over each epoch's batches, and a table: by default a row per
    epoch phase (`learn.epoch_metrics`, from MetricsCB, plus the time), or with `rows="epoch"`
    fastai's row per epoch, `epoch train_loss valid_loss <metrics> time`.

    Bars are drawn only in a notebook or a terminal: in a log file their `\\r` redraws would be
    thousands of lines. `plot=True` draws the training and validation losses live in a notebook.
    A trial fit (`learn.trial_fit`, lr_find's) gets only the batch bar, which leaves nothing behind.
    """

    order = Order.PROGRESS

    def __init__(self, plot: bool = False, comment_every: float = 0.2, rows: str = "phase"):
        if rows not in ("phase", "epoch"):
            raise ValueError(f"ProgressCB(rows={rows!r}): expected 'phase' (a row for each training and each "
                             "validation pass) or 'epoch' (fastai's row an epoch: epoch train_loss valid_loss ... time)")
        self.plot, self.comment_every, self.rows = plot, comment_every, rows

    def before_fit(self, learn):
        self.active = learn.is_main_process  # under several processes, only the main one shows progress
        if not self.active:
            return
        # Asked at each fit, so that a notebook or a redirected stdout is seen as it is now.
        self.bars = IN_NOTEBOOK or sys.stdout.isatty()
        self.table = not learn.trial_fit
        self.live_plot = self.plot and IN_NOTEBOOK and self.table  # a terminal or a file has nowhere to draw it
        self.mbar = self.epoch_row = None
        if self.bars and self.table:
            learn.epochs = self.mbar = master_bar(learn.epochs)
        if self.rows == "epoch":
            learn.epochs = self._write_each_epoch_row(learn.epochs)
        self.columns: list[str] | None = None
        self.widths: list[int] = []
        self.train_losses: list[float] = []
        self.valid_losses: list[tuple[int, float]] = []  # (batches seen, loss)

    def before_epoch(self, learn):
        if not self.active:
            return
        self.start, self.last_comment = time.monotonic(), 0.0
        if self.epoch_row is None:
            self.epoch_start = self.start
        self.pbar = None
        if self.bars and hasattr(learn.dl, "__len__"):  # fastprogress needs a length; an iterator runs barless
            learn.dl = self.pbar = progress_bar(learn.dl, leave=False, parent=self.mbar)

    def after_batch(self, learn):
        if not self.active or not learn.training or learn.loss is None:
            return
        if self.live_plot:
            self.train_losses.append(learn.loss.item())
        now = time.monotonic()
        # Reading the loss waits for the GPU, so refresh the comment only as often as the bar redraws.
        if self.pbar is not None and now - self.last_comment >= self.comment_every:
            self.pbar.comment = f"loss {learn.loss.item():.4f}"
            self.last_comment = now

    def after_epoch(self, learn):
        if not self.active or not self.table:
            return
        row = dict(learn.epoch_metrics or {"epoch": learn.epoch, "phase": "train" if learn.training else "valid"})
        if self.live_plot and not learn.training and "loss" in row:
            self.valid_losses.append((len(self.train_losses), row["loss"]))
            self.mbar.names = ["train loss (per batch)", "valid loss (per epoch)"]  # the legend
            self.mbar.update_graph([[range(len(self.train_losses)), self.train_losses],
                                    [[i for i, _ in self.valid_losses], [v for _, v in self.valid_losses]]])
            ax = self.mbar.graph_ax  # fastprogress leaves the axes unlabelled and pins its legend top right
            ax.lines[1].set_marker("o")  # a line of one point (after one epoch) draws nothing without it
            ax.set(xlabel="training batches seen", ylabel="loss")
            ax.legend(loc="best")
            self.mbar.graph_out.update(ax.figure)
        if self.rows == "phase":
            self._write_row({**row, "time": _elapsed(self.start)})
            return
        self.epoch_row = self.epoch_row or {"epoch": row["epoch"]}
        self.epoch_row["train_loss" if learn.training else "valid_loss"] = row.get("loss", "")
        if not learn.training:
            self.epoch_row.update((k, v) for k, v in row.items() if k not in ("epoch", "phase", "loss"))

    def _write_each_epoch_row(self, epochs):
        for epoch in epochs:
            yield epoch
            self._write_epoch_row()  # the loop asks for the next epoch: this one's passes are over

    def _write_epoch_row(self) -> None:
        if self.epoch_row is not None:
            self._write_row({**self.epoch_row, "time": _elapsed(self.epoch_start)})
            self.epoch_row = None

    def _write_row(self, row: dict) -> None:
        if self.columns is None:
            self.columns = list(row)
            self._write(self.columns)
        cells = (row.get(c, "") for c in self.columns)
        self._write([f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells])

    def cleanup_epoch(self, learn):
        # A pass stopped early leaves its bar half drawn and the cursor after it: end that line, so the
        # next print starts on a new one (fastprogress does so only for a bar that reaches its end).
        if self.active and self.pbar is not None and self.pbar.last_v is not None:
            if IN_NOTEBOOK or not self.table:  # a bar without a table (trial fit) erases itself
                self.pbar.on_iter_end()
            else:
                print(flush=True)

    def cleanup_fit(self, learn):
        if self.active and self.rows == "epoch":
            self._write_epoch_row()  # of an epoch a stop cut short

    def _write(self, cells: list[str]) -> None:
        if self.mbar is not None:
            self.mbar.write(cells, table=True)
            return
        if not self.widths:  # the header row sets the column widths
            self.widths = [max(len(c), 8) for c in cells]
        print("  ".join(c.ljust(w) for c, w in zip(cells, self.widths)).rstrip(), flush=True)


def _elapsed(start: float) -> str:
    return time.strftime("%M:%S", time.gmtime(time.monotonic() - start))
