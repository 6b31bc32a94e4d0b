"""TerminateOnNaNCB: a NaN loss stops the fit before the step."""

import warnings
import pytest
import torch
from minilearn import Callback
from minilearn.callbacks import TerminateOnNaNCB


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
