"""Monitor, the watched value SaveModelCB and EarlyStoppingCB share."""

import pytest
from minilearn.callbacks import EarlyStoppingCB, MetricsCB, Monitor, SaveModelCB


def test_a_monitor_without_metrics_says_to_add_metrics_cb(make_learner, tmp_path):
    learn = make_learner()
    with pytest.raises(ValueError, match=r"monitor 'valid_loss' needs 'loss' .* add MetricsCB\(\)") as err:
        learn.fit(1, cbs=SaveModelCB(path=tmp_path))
    assert "callback SaveModelCB at after_epoch" in err.value.__notes__[0]
    with pytest.raises(ValueError, match="'accuracy'"):
        learn.fit(1, cbs=[MetricsCB(), EarlyStoppingCB("valid_accuracy")])
    learn.fit(1)  # and the learner goes on


def test_monitor_min_delta_and_non_finite_values():
    m = Monitor("train_loss", min_delta=0.5)
    assert [m.update(v) for v in (float("nan"), 2.0, 1.6, float("inf"), 1.4)] == [False, True, False, False, True]
    assert m.best == 1.4
    with pytest.raises(ValueError, match="min_delta must be >= 0"):
        Monitor(min_delta=-1)
