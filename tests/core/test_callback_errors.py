"""An exception in a callback or a step keeps its type and gets a note naming the callback (or the
step's owner), the event and where in the fit it happened; Cancel* exceptions pass untouched; after
any exception or interrupt the learner is as before and the next fit works."""

import pytest
import torch
import torch.nn.functional as F

from minilearn import CancelBatchException, Callback


class Raise(Callback):
    order = 7

    def __init__(self, event, exc, epoch=0, iter=0, training=True):
        self.exc, self.epoch, self.iter, self.training = exc, epoch, iter, training
        setattr(self, event, self.maybe_raise)

    def maybe_raise(self, learn):
        if (learn.epoch, learn.iter, learn.training) == (self.epoch, self.iter, self.training):
            raise self.exc


def test_an_exception_in_a_callback_keeps_its_type_and_names_the_callback_and_the_event(make_learner):
    learn = make_learner()
    with pytest.raises(ZeroDivisionError) as err:
        learn.fit(2, cbs=Raise("after_loss", ZeroDivisionError("oops"), epoch=1, iter=3))
    (note,) = err.value.__notes__
    assert note.startswith("minilearn: raised by callback Raise at after_loss in epoch 1 (training batch 3; "
                           "batch: [float32 (8, 3), float32 (8, 1)])")
    assert note.endswith("; model output: float32 (8, 1)")


@pytest.mark.parametrize("event, iter, where", [("before_fit", 0, "at before_fit"),
                                                ("after_epoch", 1, "at after_epoch in epoch 0 (validation)")])
def test_notes_say_only_what_is_known_at_the_event(make_learner, event, iter, where):
    with pytest.raises(KeyError) as err:
        make_learner().fit(1, cbs=Raise(event, KeyError("k"), iter=iter, training=False))
    assert err.value.__notes__ == [f"minilearn: raised by callback Raise {where}"]


def test_an_exception_in_a_step_names_the_step_its_owner_and_the_shapes(make_learner):
    learn = make_learner()
    learn.dls.train = [(torch.randn(4, 3), torch.randn(5, 1))]  # batch sizes that do not match
    with pytest.raises(RuntimeError, match="size of tensor a") as err:
        with pytest.warns(UserWarning):  # F.mse_loss warns about broadcasting first
            learn.fit(1)
    assert err.value.__notes__ == ["minilearn: raised by the step get_loss (owned by TrainCB) at get_loss in epoch 0 "
                                   "(training batch 0; batch: (float32 (4, 3), float32 (5, 1))); model output: "
                                   "float32 (4, 1)"]
    learn.dls.train = [(torch.randn(4, 3), torch.randn(4, 1))]
    learn.fit(1)


def test_cancel_exceptions_pass_through_without_notes(make_learner):
    seen = []

    class Watch(Callback):
        order = 50

        def after_batch(self, learn):
            seen.append(learn.iter)

    exc = CancelBatchException()
    make_learner().fit(1, cbs=[Raise("after_loss", exc), Watch()], valid=False)
    assert seen == [0, 1, 2, 3, 4] and not hasattr(exc, "__notes__")


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError("boom")])
@pytest.mark.parametrize("model_was_training", [True, False])
def test_after_an_interrupt_or_error_mid_epoch_the_learner_is_as_before(make_learner, exc, model_was_training):
    learn = make_learner()
    learn.model.train(model_was_training)
    cbs_before = list(learn.cbs)
    with pytest.raises(type(exc) if isinstance(exc, BaseException) else exc):
        learn.fit(2, cbs=Raise("after_step", exc, epoch=1, iter=2))
    assert learn.cbs == cbs_before and learn.model.training is model_was_training
    # the next fit runs whole, and from the same state trains exactly like a learner never interrupted
    other = make_learner()
    other.model.load_state_dict(learn.model.state_dict())
    other.opt = torch.optim.SGD(other.model.parameters(), lr=learn.lr)
    learn.fit(1)
    other.fit(1)
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), other.model.parameters()))


def test_a_loss_returning_nan_without_terminate_on_nan_is_not_an_error(make_learner):
    learn = make_learner(loss_func=lambda preds, y: F.mse_loss(preds, y) * float("nan"))
    learn.fit(1)  # documented: NaN is not checked unless TerminateOnNaNCB is added
    assert torch.isnan(learn.loss)


class KeepsItsOwnLoss(Callback):
    """The textbook slip: a loss owner that stores the loss on itself, not on the learner."""
    order = 50

    def get_loss(self, learn):
        self.loss = F.mse_loss(learn.preds, learn.batch[1])


def test_a_get_loss_owner_that_leaves_learn_loss_unset_is_named_whoever_trips_over_it(make_learner):
    from minilearn import LossOutputError
    from minilearn.callbacks import MetricsCB
    from minilearn.exceptions import raised_by
    for cbs in ([KeepsItsOwnLoss(), MetricsCB()], [KeepsItsOwnLoss()]):  # MetricsCB's float(None), backward's None
        learn = make_learner()
        with pytest.raises(LossOutputError, match=r"^KeepsItsOwnLoss.get_loss left learn.loss unset \(None\); it set "
                                                  r"KeepsItsOwnLoss.loss, a tensor, instead: the owner of get_loss "
                                                  r"sets learn.loss to the loss of the batch, a 0-dim tensor") as err:
            learn.fit(1, cbs=cbs)
        assert raised_by(err.value) == ("KeepsItsOwnLoss", "get_loss")
        assert isinstance(err.value.__cause__, (TypeError, AttributeError))  # what tripped over the None
        learn.fit(1)  # usable: TrainCB owns get_loss again
        assert learn.loss is not None


def test_a_loss_set_to_none_on_purpose_by_a_cancelled_batch_is_not_blamed_on_get_loss(make_learner):
    class SkipAll(Callback):
        def after_predict(self, learn): raise CancelBatchException

    learn = make_learner()
    learn.fit(1, cbs=SkipAll())
    assert learn.loss is None
