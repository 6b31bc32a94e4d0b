"""CSVLoggerCB: the epoch table, one row per pass, in a CSV file that outlives the notebook."""

import csv
import io
import os
import time
from pathlib import Path

from minilearn.callback import Callback
from minilearn.order import Order

__all__ = ["CSVLoggerCB"]


class CSVLoggerCB(Callback):
    """Write the row `MetricsCB` leaves on `learn.epoch_metrics` after each training and validation
    pass to `path`: `epoch`, `phase`, every metric of the progress table, and `time` (the pass's
    seconds). Each row is flushed as it is written, so the file is up to date while the fit runs and
    after it is killed.

    A new fit starts the file afresh, unless `append=True`. A fit resumed from a checkpoint
    (`fit(resume=...)`) keeps the rows of the epochs before the one it resumes at and goes on after
    them, so the file reads as that of a fit never interrupted (but for the row of a pass resumed in
    its middle, which `MetricsCB` averages over the batches after the resume only). Only the main
    process writes.

    >>> import tempfile
    >>> cb = CSVLoggerCB(Path(tempfile.mkdtemp()) / "history.csv")
    >>> cb.path.name
    'history.csv'
    """

    order = Order.CSV_LOGGER

    def __init__(self, path: str | os.PathLike = "history.csv", append: bool = False):
        self.path, self.append = Path(path), append
        self._file: io.TextIOBase | None = None

    def before_fit(self, learn):
        self._columns: list[str] | None = None
        self._opened = False

    def _open(self, first_epoch: int) -> None:
        # At the end of the fit's first pass, when the epoch it starts at is known (a resumed fit's).
        kept = self._kept_rows(first_epoch) if self.path.exists() else ([], [])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="")
        if kept[0]:
            self._columns = kept[0]
            csv.writer(self._file).writerows([kept[0], *kept[1]])

    def _kept_rows(self, first_epoch: int) -> tuple[list[str], list[list[str]]]:
        # The header and the rows to keep: all of them when appending, else those of the epochs before
        # the one a resumed fit starts at (the later ones were written after its checkpoint).
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return [], []
        header, body = rows[0], rows[1:]
        if not self.append:
            epoch = header.index("epoch") if "epoch" in header else None
            body = [r for r in body if epoch is not None and int(r[epoch]) < first_epoch]
        return (header, body) if body or self.append else ([], [])  # nothing kept: a fresh file, new columns

    def before_epoch(self, learn):
        self._start = time.monotonic()

    def after_epoch(self, learn):
        if not learn.is_main_process:
            return
        if not self._opened:
            self._opened = True
            self._open(learn.epoch)
        if learn.epoch_metrics is None:
            raise ValueError("CSVLoggerCB writes the row MetricsCB makes at the end of each pass, and there is none: "
                             "add MetricsCB() to the learner's callbacks")
        row = {**learn.epoch_metrics, "time": round(time.monotonic() - self._start, 3)}
        if self._columns is None:
            self._columns = list(row)
            csv.writer(self._file).writerow(self._columns)
        if list(row) != self._columns:
            raise ValueError(f"the row of epoch {learn.epoch} ({'train' if learn.training else 'valid'}) has the "
                             f"columns {list(row)}, but {self.path} has {self._columns}: log a fit with other "
                             f"metrics to another file, or start this one afresh (append=False)")
        csv.writer(self._file).writerow([row[c] for c in self._columns])
        self._file.flush()

    def cleanup_fit(self, learn):
        if self._file is not None:
            self._file.close()
            self._file = None
