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
    """Write the row `MetricsCB` leaves on `learn.epoch_metrics` after each pass to `path`: `epoch`,
    `phase`, every metric, and `time` (the pass's seconds), flushed row by row. Only the main process
    writes. A new fit starts the file afresh, unless `append=True`; a fit resumed from a checkpoint
    keeps the rows of the epochs before the one it resumes at, so the file reads as uninterrupted.

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

    def _kept_rows(self, first_epoch: int) -> tuple[list[str], list[list[str]]]:
        # The header and the rows to keep: all of them when appending, else those of the epochs before
        # the one a resumed fit starts at (the later ones were written after its checkpoint).
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return [], []
        header, body = rows[0], rows[1:]
        if not self.append:
            body = [r for r in body if "epoch" in header and int(r[header.index("epoch")]) < first_epoch]
        return (header, body) if body or self.append else ([], [])  # nothing kept: a fresh file, new columns

    def before_epoch(self, learn):
        self._start = time.monotonic()

    def after_epoch(self, learn):
        if not learn.is_main_process:
            return
        if not self._opened:  # at the end of the first pass, when the epoch a resumed fit starts at is known
            self._opened = True
            header, body = self._kept_rows(learn.epoch) if self.path.exists() else ([], [])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", newline="")
            if header:
                self._columns = header
                csv.writer(self._file).writerows([header, *body])
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
