"""Each cancel exception skips exactly what it says, and the loop goes on."""

import pytest

from minilearn import CancelBatchException, CancelEpochException, CancelFitException, Callback


class Counter(Callback):
    """Counts events, and raises `exc` in event `where` when `when(learn)` is true."""

    order = 10

    def __init__(self, where, exc, when=lambda learn: True):
        self.where, self.exc, self.when = where, exc, when
        self.n = {}

    def _hit(self, name, learn):
        self.n[name] = self.n.get(name, 0) + 1
        if name == self.where and self.when(learn):
            raise self.exc()

    def before_fit(self, learn): self._hit("before_fit", learn)
    def after_fit(self, learn): self._hit("after_fit", learn)
    def cleanup_fit(self, learn): self._hit("cleanup_fit", learn)
    def before_epoch(self, learn): self._hit("before_epoch", learn)
    def after_epoch(self, learn): self._hit("after_epoch", learn)
    def cleanup_epoch(self, learn): self._hit("cleanup_epoch", learn)
    def before_batch(self, learn): self._hit("before_batch", learn)
    def after_predict(self, learn): self._hit("after_predict", learn)
    def after_loss(self, learn): self._hit("after_loss", learn)
    def after_step(self, learn): self._hit("after_step", learn)
    def after_batch(self, learn): self._hit("after_batch", learn)
    def cleanup_batch(self, learn): self._hit("cleanup_batch", learn)


# regression_dls: 5 train batches and 2 valid batches an epoch


def test_cancel_batch_skips_the_rest_of_that_batch_only(make_learner):
    cb = Counter("after_loss", CancelBatchException, when=lambda learn: learn.training and learn.iter % 2 == 0)
    learn = make_learner(cbs=cb)
    learn.fit(2)
    # 3 of 5 train batches cancelled after the loss (iters 0, 2, 4): no step for them
    assert cb.n["after_loss"] == 2 * (5 + 2)
    assert cb.n["after_step"] == 2 * 2
    assert cb.n["after_batch"] == cb.n["cleanup_batch"] == 2 * (5 + 2)
    assert cb.n["after_epoch"] == 4


def test_cancel_batch_in_before_batch_skips_the_model_entirely(make_learner):
    cb = Counter("before_batch", CancelBatchException)
    learn = make_learner(cbs=cb)
    before = [p.clone() for p in learn.model.parameters()]
    learn.fit(1)
    assert "after_predict" not in cb.n
    assert cb.n["after_batch"] == cb.n["cleanup_batch"] == 7
    assert all((a == b).all() for a, b in zip(before, learn.model.parameters()))


def test_cancel_epoch_ends_the_phase_and_the_next_phase_runs(make_learner):
    cb = Counter("after_step", CancelEpochException, when=lambda learn: learn.iter == 1)
    learn = make_learner(cbs=cb)
    learn.fit(2)
    assert cb.n["after_step"] == 2 * 2  # two training batches an epoch, then the epoch ends
    assert cb.n["after_batch"] == 2 * (1 + 2)  # the cancelled batch skips its after_batch, the valid phase runs whole
    assert cb.n["cleanup_batch"] == 2 * (2 + 2)
    assert cb.n["after_epoch"] == cb.n["cleanup_epoch"] == 4
    assert cb.n["after_fit"] == 1


def test_cancel_fit_stops_everything_but_after_and_cleanup_fit(make_learner):
    cb = Counter("after_batch", CancelFitException, when=lambda learn: learn.iter == 2)
    learn = make_learner(cbs=cb)
    learn.fit(3)
    assert cb.n["before_batch"] == 3
    assert cb.n["before_epoch"] == 1
    assert "after_epoch" not in cb.n
    assert cb.n["cleanup_epoch"] == 1 and cb.n["cleanup_batch"] == 3
    assert cb.n["after_fit"] == cb.n["cleanup_fit"] == 1


def test_cancel_fit_in_before_fit_runs_no_epoch(make_learner):
    cb = Counter("before_fit", CancelFitException)
    learn = make_learner(cbs=cb)
    learn.fit(3)
    assert "before_epoch" not in cb.n and cb.n["after_fit"] == 1


def test_a_real_error_is_not_swallowed_and_cleanup_still_runs(make_learner):
    cb = Counter("after_loss", ZeroDivisionError, when=lambda learn: learn.iter == 1)
    learn = make_learner(cbs=cb)
    with pytest.raises(ZeroDivisionError):
        learn.fit(1)
    assert "after_fit" not in cb.n
    assert cb.n["cleanup_batch"] == 2 and cb.n["cleanup_epoch"] == 1 and cb.n["cleanup_fit"] == 1
    learn.remove_cbs(cb)
    learn.fit(1)  # the learner is still usable


def test_a_batch_cancelled_before_its_loss_shows_no_stale_results(make_learner):
    seen = []

    class SkipOdd(Counter):
        def after_batch(self, learn):
            seen.append((learn.iter, learn.loss is None, learn.preds is None, learn.loss_metrics))

    cb = SkipOdd("before_batch", CancelBatchException, when=lambda learn: learn.iter % 2 == 1)
    make_learner(cbs=cb).fit(1, valid=False)
    assert seen == [(0, False, False, {}), (1, True, True, {}), (2, False, False, {}), (3, True, True, {}),
                    (4, False, False, {})]
