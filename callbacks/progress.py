"""ProgressCB: progress bars, the epoch table and (in a notebook) a live loss plot, via fastprogress."""

import time

from fastprogress.fastprogress import master_bar, progress_bar

from minilearn.callback import Callback

__all__ = ["ProgressCB"]


class ProgressCB(Callback):
    """Show a bar over epochs, a bar over the batches of each epoch, and a table with one row per
    epoch phase (the row MetricsCB leaves on `learn.epoch_metrics`, plus the time taken).

    With `plot=True` it also draws the training loss per batch and the validation loss per epoch,
    live, in a notebook (in a terminal fastprogress has nowhere to draw, and skips it).
    """

    order = 50

    def __init__(self, plot: bool = False, comment_every: float = 0.2):
        self.plot, self.comment_every = plot, comment_every

    def before_fit(self, learn):
        self.active = learn.is_main_process  # under several processes, only the main one shows progress
        if not self.active:
            return
        learn.epochs = self.mbar = master_bar(learn.epochs)
        self.columns: list[str] | None = None
        self.train_losses: list[float] = []
        self.valid_losses: list[tuple[int, float]] = []

    def before_epoch(self, learn):
        if not self.active:
            return
        self.start, self.last_comment = time.monotonic(), 0.0
        self.pbar = None
        if hasattr(learn.dl, "__len__"):  # fastprogress needs a length; a bare iterator runs without a bar
            learn.dl = self.pbar = progress_bar(learn.dl, leave=False, parent=self.mbar)

    def after_batch(self, learn):
        if not self.active or not learn.training or learn.loss is None:
            return
        if self.plot:
            self.train_losses.append(learn.loss.item())
        now = time.monotonic()
        # Reading the loss waits for the GPU, so refresh the comment only as often as the bar redraws.
        if self.pbar is not None and now - self.last_comment >= self.comment_every:
            self.pbar.comment = f"loss {learn.loss.item():.4f}"
            self.last_comment = now

    def after_epoch(self, learn):
        if not self.active:
            return
        row = dict(learn.epoch_metrics or {"epoch": learn.epoch,
                                                            "phase": "train" if learn.training else "valid"})
        row["time"] = time.strftime("%M:%S", time.gmtime(time.monotonic() - self.start))
        if self.columns is None:
            self.columns = list(row)
            self.mbar.write(self.columns, table=True)
        self.mbar.write([_fmt(row.get(c, "")) for c in self.columns], table=True)
        if self.plot and not learn.training and "loss" in row:
            self.valid_losses.append((len(self.train_losses), row["loss"]))
            graphs = [[range(len(self.train_losses)), self.train_losses]]
            if self.valid_losses:
                graphs.append([[i for i, _ in self.valid_losses], [v for _, v in self.valid_losses]])
            self.mbar.update_graph(graphs)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
