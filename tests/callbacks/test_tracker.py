"""TrackerCB: what it logs reads back from TensorBoard's event files; a failing tracker does not lose
the fit; the tracker is closed when the fit ends, also when it raises; only the main process logs."""

import pytest
from accelerate.tracking import GeneralTracker
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minilearn import Callback
from minilearn.callbacks import MetricsCB, TrackerCB


class ListTracker(GeneralTracker):
    """Keeps what it is given; `fail_at` makes its n-th `log` raise, as a tracker losing its server would."""

    name = "list"
    requires_logging_directory = False
    main_process_only = False

    def __init__(self, fail_at=None):
        super().__init__()
        self.logged, self.finished, self.fail_at = [], 0, fail_at

    @property
    def tracker(self):
        return self

    def start(self):
        pass

    def store_init_configuration(self, values):
        pass

    def log(self, values, step=None, **kwargs):
        if self.fail_at is not None and len(self.logged) + 1 == self.fail_at:
            raise OSError("connection lost")
        self.logged.append((dict(values), step))

    def finish(self):
        self.finished += 1


def test_the_tensorboard_event_files_hold_every_logged_scalar(make_learner, tmp_path):
    metrics = MetricsCB()
    learn = make_learner(cbs=[metrics, TrackerCB(logging_dir=tmp_path, run_name="run", every=2)])
    learn.fit(2)
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert {"batch/loss", "batch/lr", "train/loss", "valid/loss"} <= set(events.Tags()["scalars"])
    n_batches = len(learn.dls.train)
    assert [e.step for e in events.Scalars("batch/loss")] == list(range(2, 2 * n_batches + 1, 2))
    for phase in ("train", "valid"):
        logged = [(e.step, e.value) for e in events.Scalars(f"{phase}/loss")]
        want = [(row["epoch"], row["loss"]) for row in metrics.history if row["phase"] == phase]
        assert [s for s, _ in logged] == [s for s, _ in want]
        assert [v for _, v in logged] == pytest.approx([v for _, v in want], rel=1e-6)  # stored as float32
    assert all(e.value == pytest.approx(learn.lr) for e in events.Scalars("batch/lr"))


def test_a_tracker_that_fails_warns_and_the_fit_goes_on_to_its_end(make_learner):
    tracker = ListTracker(fail_at=3)
    learn = make_learner(cbs=MetricsCB())
    with pytest.warns(UserWarning, match=r"raised OSError\('connection lost'\) at training batch 3; nothing more"):
        learn.fit(2, cbs=TrackerCB(tracker))
    assert len(tracker.logged) == 2 and tracker.finished == 1
    assert learn.epoch == 1 and learn.epoch_metrics["phase"] == "valid"


def test_the_tracker_is_closed_when_the_fit_raises(make_learner):
    class Boom(Callback):
        def after_batch(self, learn):
            if learn.iter == 1:
                raise RuntimeError("boom")

    tracker = ListTracker()
    learn = make_learner(cbs=MetricsCB())
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[TrackerCB(tracker), Boom()])
    assert tracker.finished == 1 and len(tracker.logged) == 1  # batch 0; Boom runs before it at batch 1
    learn.fit(1)  # the learner is usable


def test_the_batch_step_runs_on_across_fits_and_epoch_rows_are_logged_at_their_epoch(make_learner):
    tracker = ListTracker()
    cb = TrackerCB(tracker)
    learn = make_learner(cbs=[MetricsCB(), cb])
    learn.fit(1)
    learn.fit(1)
    batch_steps = [step for values, step in tracker.logged if "batch/loss" in values]
    assert batch_steps == list(range(1, 2 * len(learn.dls.train) + 1))
    rows = [(step, sorted(values)) for values, step in tracker.logged if "batch/loss" not in values]
    assert rows == [(0, ["train/loss"]), (0, ["valid/loss"])] * 2


def test_only_the_main_process_logs(make_learner):
    tracker = ListTracker()
    learn = make_learner(cbs=MetricsCB())
    learn.is_main_process = False  # as AccelerateCB sets it on the other processes
    learn.fit(1, cbs=TrackerCB(tracker))
    assert tracker.logged == [] and tracker.finished == 0


@pytest.mark.parametrize("kwargs, match", [({"every": 0}, "every must be a whole number >= 1"),
                                           ({"log_with": "tensorbored"}, "unknown tracker 'tensorbored'")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrackerCB(**kwargs)
