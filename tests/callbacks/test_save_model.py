"""SaveModelCB, EarlyStoppingCB and TerminateOnNaNCB, and the Monitor they share."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from minilearn import Callback
from minilearn.callbacks import EarlyStoppingCB, MetricsCB, Monitor, SaveModelCB, TerminateOnNaNCB
from minilearn.checkpoints.files import read_checkpoint


class FakeValidLoss(Callback):
    """Replaces the validation loss of each epoch by the next of `values` (after MetricsCB wrote it)."""

    order = 41

    def __init__(self, values):
        self.values = list(values)

    def after_epoch(self, learn):
        if not learn.training:
            learn.epoch_metrics["loss"] = self.values[learn.epoch]


def test_save_model_cb_saves_when_the_monitor_improves_and_keeps_the_newest(make_learner, tmp_path):
    cb = SaveModelCB(keep=2, path=tmp_path)
    learn = make_learner(cbs=[MetricsCB(), FakeValidLoss([3.0, 2.0, 2.5, 1.0, 1.5]), cb])
    learn.fit(5)
    assert [p.name for p in cb.checkpoints()] == ["epoch-0001", "epoch-0003"]  # improved at 0, 1, 3; kept 2
    assert read_checkpoint(cb.latest)[0]["callbacks"]["SaveModelCB"] == {"best": 1.0}


def test_save_model_cb_every_epoch_and_mode_max(make_learner, tmp_path):
    every = SaveModelCB(every_epoch=True, keep=3, path=tmp_path / "every")
    best_max = SaveModelCB(mode="max", keep=5, path=tmp_path / "max")
    learn = make_learner(cbs=[MetricsCB(), FakeValidLoss([3.0, 2.0, 2.5, 4.0]), every, best_max])
    learn.fit(4)
    assert [p.name for p in every.checkpoints()] == ["epoch-0001", "epoch-0002", "epoch-0003"]
    assert [p.name for p in best_max.checkpoints()] == ["epoch-0000", "epoch-0003"]


@pytest.mark.parametrize("kwargs, match", [
    ({"monitor": "loss"}, "monitor must be 'train_<metric>' or 'valid_<metric>'"),
    ({"mode": "lowest"}, "mode must be 'min' or 'max', got 'lowest'"),
    ({"keep": 0}, "keep must be a whole number >= 1, got 0"),
])
def test_save_model_cb_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SaveModelCB(**kwargs)


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


def test_early_stopping_waits_patience_epochs_without_improvement(make_learner, capsys):
    stop = EarlyStoppingCB(patience=2, min_delta=0.1)
    learn = make_learner(cbs=[MetricsCB(), FakeValidLoss([3.0, 2.0, 1.95, 1.92, 0.1, 0.0]), stop])
    seen = []
    learn.fit(6, cbs=type("Epochs", (Callback,), {"after_fit": lambda self, learn: seen.append(learn.epoch)})())
    assert seen == [3]  # epochs 2 and 3 improved by less than min_delta
    assert stop.message == ("EarlyStoppingCB: valid_loss has not improved on 2.0 by more than 0.1 for 2 epochs; "
                            "stopped after epoch 3")
    assert stop.message in capsys.readouterr().out
    with pytest.raises(ValueError, match="patience must be a whole number >= 1"):
        EarlyStoppingCB(patience=0)


class NaNAt(Callback):
    """Makes the loss of one training batch NaN (as a real blow-up would)."""

    order = -30

    def __init__(self, epoch, iter):
        self.epoch, self.iter = epoch, iter

    def after_loss(self, learn):
        if learn.training and (learn.epoch, learn.iter) == (self.epoch, self.iter):
            learn.loss = learn.loss * float("nan")


def test_terminate_on_nan_stops_before_the_step_and_names_epoch_and_batch(make_learner):
    # What the weights are after epoch 0 and the first two batches of epoch 1:
    two_batches = make_learner()
    two_batches.fit(1)
    two_batches.dls.train = list(two_batches.dls.train)[:2]
    two_batches.fit(1, valid=False)

    learn = make_learner()
    cb = TerminateOnNaNCB()
    with pytest.warns(RuntimeWarning, match=r"the loss is nan at epoch 1, training batch 2; the fit was cancelled"):
        learn.fit(3, cbs=[cb, NaNAt(1, 2)])
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), two_batches.model.parameters()))
    assert "epoch 1, training batch 2" in cb.message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.fit(1, cbs=TerminateOnNaNCB())  # a finite loss: no warning, the fit runs


def test_without_terminate_on_nan_the_nan_reaches_the_weights(make_learner):
    learn = make_learner()
    learn.fit(1, cbs=NaNAt(0, 1))
    assert any(torch.isnan(p).any() for p in learn.model.parameters())
