"""SaveModelCB: when it saves, what it keeps, and its settings refused."""

import pytest

from minilearn.callbacks import MetricsCB, SaveModelCB
from minilearn.checkpoints.files import read_checkpoint

from conftest import FakeValidLoss


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
