"""CSVLoggerCB: the rows equal the epoch table, are on disk as soon as each pass ends, and a resumed fit
keeps the rows before the epoch it resumes at, so the file equals that of the uninterrupted fit."""

import csv

import pytest
from support import SaveThenInterrupt, seed_everything
from support import make_learner as resumable_learner

from minilearn import Callback
from minilearn.callbacks import CSVLoggerCB, MetricsCB, OneCycleCB


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mae(preds, target):
    return (preds - target).abs().mean()


def test_the_rows_are_the_epoch_table_with_the_time_of_each_pass(make_learner, tmp_path):
    metrics = MetricsCB(mae=mae)
    learn = make_learner(cbs=[metrics, CSVLoggerCB(tmp_path / "logs" / "history.csv")])
    learn.fit(3)
    rows = read(tmp_path / "logs" / "history.csv")
    assert [(int(r["epoch"]), r["phase"]) for r in rows] == [(e, p) for e in range(3) for p in ("train", "valid")]
    for row, want in zip(rows, metrics.history):
        assert list(row) == [*want, "time"]
        assert float(row["loss"]) == want["loss"] and float(row["mae"]) == want["mae"]  # repr round-trips floats
        assert 0 <= float(row["time"]) < 60


def test_each_row_is_on_disk_when_its_pass_ends(make_learner, tmp_path):
    path = tmp_path / "history.csv"
    seen = []

    class ReadTheFile(Callback):
        order = 100

        def after_epoch(self, learn):
            seen.append(len(read(path)))

    make_learner(cbs=[MetricsCB(), CSVLoggerCB(path), ReadTheFile()]).fit(2)
    assert seen == [1, 2, 3, 4]


def test_a_new_fit_starts_afresh_unless_it_appends(make_learner, tmp_path):
    path = tmp_path / "history.csv"
    learn = make_learner(cbs=MetricsCB())
    learn.fit(2, cbs=CSVLoggerCB(path))
    learn.fit(1, cbs=CSVLoggerCB(path))
    assert len(read(path)) == 2
    learn.fit(1, cbs=CSVLoggerCB(path, append=True))
    assert [r["epoch"] for r in read(path)] == ["0", "0", "0", "0"]


@pytest.mark.parametrize("where", [(1, None), (1, 2)], ids=["epoch-end", "mid-epoch"])
def test_a_resumed_fit_keeps_the_rows_before_its_checkpoint_and_writes_the_rest(tmp_path, where):
    columns = ["epoch", "phase", "loss"]
    seed_everything(1)
    resumable_learner().fit(3, cbs=[OneCycleCB(0.1), CSVLoggerCB(tmp_path / "full.csv")])
    seed_everything(1)
    with pytest.raises(KeyboardInterrupt):
        resumable_learner().fit(3, cbs=[OneCycleCB(0.1), CSVLoggerCB(tmp_path / "run.csv"),
                                   SaveThenInterrupt(tmp_path / "ck", *where)])
    assert len(read(tmp_path / "run.csv")) == (4 if where[1] is None else 2)
    seed_everything(99)
    resumable_learner(seed=5).fit(3, cbs=[OneCycleCB(0.1), CSVLoggerCB(tmp_path / "run.csv")], resume=tmp_path / "ck")
    full, resumed = read(tmp_path / "full.csv"), read(tmp_path / "run.csv")
    assert [(r["epoch"], r["phase"]) for r in resumed] == [(r["epoch"], r["phase"]) for r in full]
    # A pass resumed in its middle is averaged over the batches after the resume only (MetricsCB's
    # sums are not in the checkpoint): that one row differs.
    partial = {("1", "train")} if where[1] is not None else set()
    for got, want in zip(resumed, full):
        if (got["epoch"], got["phase"]) not in partial:
            assert [got[c] for c in columns] == [want[c] for c in columns]


def test_without_metrics_cb_it_says_what_is_missing_and_the_learner_stays_usable(make_learner, tmp_path):
    learn = make_learner()
    with pytest.raises(ValueError, match=r"add MetricsCB\(\)"):
        learn.fit(1, cbs=CSVLoggerCB(tmp_path / "h.csv"))
    learn.fit(1, cbs=[MetricsCB(), CSVLoggerCB(tmp_path / "h.csv")])
    assert len(read(tmp_path / "h.csv")) == 2


def test_a_row_with_other_columns_than_the_file_is_refused_naming_both(make_learner, tmp_path):
    path = tmp_path / "h.csv"
    learn = make_learner(cbs=[MetricsCB()])
    learn.fit(1, cbs=CSVLoggerCB(path))
    with pytest.raises(ValueError, match=r"has the columns \['epoch', 'phase', 'loss', 'mae', 'time'\].*"
                                         r"\['epoch', 'phase', 'loss', 'time'\]"):
        learn.fit(1, cbs=[MetricsCB(mae=mae), CSVLoggerCB(path, append=True)])
