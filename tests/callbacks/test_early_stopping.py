"""EarlyStoppingCB: patience without improvement."""

import pytest
from minilearn import Callback
from minilearn.callbacks import EarlyStoppingCB, MetricsCB
from conftest import FakeValidLoss


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
