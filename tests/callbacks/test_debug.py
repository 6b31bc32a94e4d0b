"""SingleBatchCB runs one batch and keeps it."""

from minilearn import Callback
from minilearn.callbacks import SingleBatchCB


def test_single_batch_runs_one_batch_and_keeps_it(make_learner):
    seen = []

    class Count(Callback):
        def before_batch(self, learn):
            seen.append(learn.iter)

    learn = make_learner(cbs=Count())
    learn.fit(5, cbs=SingleBatchCB())
    assert seen == [0] and learn.preds.shape == (8, 1) and learn.loss.ndim == 0
