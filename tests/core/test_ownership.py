"""Which callback runs each step, and how adding and removing callbacks changes it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilearn import STEPS, Callback, TrainCB


class ConstantLoss(Callback):
    """Owns get_loss: a loss of preds.sum() * 0 + value, so we can tell who computed it."""

    order = 10

    def __init__(self, value=7.0):
        self.value = value

    def get_loss(self, learn):
        learn.loss = learn.preds.sum() * 0 + self.value
        learn.loss_metrics = {}


def owners(learn):
    return {s: (type(cb).__name__ if cb else None) for s, cb in learn._owners.items()}


def test_trainCB_owns_every_step_by_default(make_learner):
    learn = make_learner()
    assert owners(learn) == {s: "TrainCB" for s in STEPS}


def test_the_highest_order_callback_owns_a_step_and_removal_restores_it(make_learner):
    learn = make_learner()
    loss_cb = ConstantLoss()
    learn.add_cbs(loss_cb)
    assert owners(learn)["get_loss"] == "ConstantLoss" and owners(learn)["predict"] == "TrainCB"
    learn.fit(1, train=False)
    assert learn.loss.item() == 7.0
    learn.remove_cbs(loss_cb)
    assert owners(learn)["get_loss"] == "TrainCB"
    learn.fit(1, train=False)
    assert learn.loss.item() != 7.0


def test_lower_order_callback_does_not_take_a_step():
    from minilearn import Learner
    low = ConstantLoss()
    low.order = -1
    learn = Learner(torch.nn.Linear(1, 1), None, cbs=[low])
    assert owners(learn)["get_loss"] == "TrainCB"


def test_equal_order_the_later_added_wins(make_learner):
    a, b = ConstantLoss(1.0), ConstantLoss(2.0)
    learn = make_learner(cbs=[a, b])
    assert learn._owners["get_loss"] is b
    learn.remove_cbs(b)
    assert learn._owners["get_loss"] is a


def test_temporary_callbacks_and_added_cbs_restore_the_owner(make_learner):
    learn = make_learner()
    learn.fit(1, cbs=ConstantLoss(3.0), valid=False)
    assert learn.loss.item() == 3.0
    assert owners(learn)["get_loss"] == "TrainCB" and len(learn.cbs) == 1
    with learn.added_cbs(ConstantLoss(4.0)):
        assert owners(learn)["get_loss"] == "ConstantLoss"
    assert owners(learn)["get_loss"] == "TrainCB"


def test_remove_by_class_removes_every_instance(make_learner):
    learn = make_learner(cbs=[ConstantLoss(), ConstantLoss()])
    learn.remove_cbs(ConstantLoss)
    assert [type(c) for c in learn.cbs] == [TrainCB]


def test_a_step_with_no_owner_says_so(make_learner):
    learn = make_learner()
    learn.remove_cbs(TrainCB)
    assert owners(learn)["predict"] is None
    with pytest.raises(RuntimeError, match="no callback owns the step 'predict'"):
        learn.fit(1)
    learn.add_cbs(TrainCB())
    learn.fit(1)


def test_show_cbs_prints_owners_and_listeners(make_learner, capsys):
    learn = make_learner(cbs=ConstantLoss())
    learn.show_cbs()
    out = capsys.readouterr().out
    assert "get_loss    ConstantLoss (order 10)" in out and "predict     TrainCB (order 0)" in out


def test_a_user_trainCB_replaces_the_default(make_learner):
    learn = make_learner(cbs=TrainCB(model_inputs=["x"]))
    assert sum(isinstance(c, TrainCB) for c in learn.cbs) == 1


def test_adding_something_that_is_not_a_callback_is_a_clear_error(make_learner):
    learn = make_learner()
    with pytest.raises(TypeError, match="expected a Callback instance"):
        learn.add_cbs(ConstantLoss)  # the class, not an instance
    learn.fit(1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.sets(st.sampled_from(STEPS))), max_size=6))
def test_owner_is_always_the_highest_order_definer(spec):
    from minilearn import Learner
    cbs = []
    for order, steps in spec:
        cb = Callback()
        cb.order = order
        for s in steps:
            setattr(cb, s, lambda learn: None)
        cbs.append(cb)
    learn = Learner(torch.nn.Linear(1, 1), None, cbs=cbs)
    for s in STEPS:
        definers = [cb for cb in learn.cbs if callable(getattr(cb, s, None))]
        best = max(cb.order for cb in definers)
        assert learn._owners[s] is [cb for cb in definers if cb.order == best][-1]
