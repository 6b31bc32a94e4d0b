"""DeviceCB moves the model and each batch."""

import torch
from minilearn import Callback
from minilearn.callbacks import DeviceCB


def test_device_cb_moves_model_and_batches(make_learner):
    moved = []

    class Where(Callback):
        order = 0

        def after_predict(self, learn):
            moved.append((learn.batch[0].device, learn.preds.device))

    learn = make_learner(cbs=[DeviceCB("cpu"), Where()])
    learn.fit(1)
    assert all(d == (torch.device("cpu"),) * 2 for d in moved)
    assert next(learn.model.parameters()).device == torch.device("cpu")
