"""The order in which events and steps happen, and what an unknown or misspelt event does."""

import re
import warnings

import pytest

from minilearn import EVENTS, STEPS, Callback, UnknownEventError, misspelt_events


class Trace(Callback):
    """Records every event, in the order the loop calls them."""

    def __init__(self):
        self.log = []

    def _rec(self, name):
        return lambda learn: self.log.append(name if name.endswith("fit") else f"{name}:{'T' if learn.training else 'V'}")


def tracer(order=0):
    cb = Trace()
    cb.order = order
    for e in EVENTS:
        setattr(cb, e, cb._rec(e))
    return cb


def test_event_order_on_a_recorded_trace(make_learner):
    cb = tracer()
    learn = make_learner(cbs=cb, dls=None)
    learn.dls.train = [b for i, b in enumerate(learn.dls.train) if i < 2]
    learn.dls.valid = [b for i, b in enumerate(learn.dls.valid) if i < 1]
    learn.fit(1)
    train_batch = ["before_batch:T", "after_predict:T", "after_loss:T", "after_backward:T", "after_step:T",
                   "after_batch:T", "cleanup_batch:T"]
    valid_batch = ["before_batch:V", "after_predict:V", "after_loss:V", "after_batch:V", "cleanup_batch:V"]
    assert cb.log == (["before_fit", "before_epoch:T"] + train_batch * 2 + ["after_epoch:T", "cleanup_epoch:T",
                      "before_epoch:V"] + valid_batch + ["after_epoch:V", "cleanup_epoch:V", "after_fit", "cleanup_fit"])


def test_callbacks_run_in_order_whatever_order_they_were_added(make_learner):
    calls = []

    def cb(order):
        c = Callback()
        c.order = order
        c.before_fit = lambda learn: calls.append(order)
        return c

    learn = make_learner(cbs=[cb(5), cb(-3), cb(1)])
    learn.fit(0)
    assert calls == [-3, 1, 5]


def test_unknown_event_is_an_error(make_learner):
    learn = make_learner()
    with pytest.raises(UnknownEventError, match="after_batchs"):
        learn.callback("after_batchs")
    learn.callback("after_batch")  # a real one with no listener is fine


def test_events_and_steps_do_not_overlap():
    assert not set(EVENTS) & set(STEPS)
    assert len(EVENTS) == 13 and len(STEPS) == 5


class Misspelt(Callback):
    def after_batchs(self, learn): pass
    def before_epochs(self, learn): pass
    def after_loss(self, learn): pass


def test_misspelt_events_are_found_with_the_nearest_name():
    assert misspelt_events(Misspelt()) == {"after_batchs": "after_batch", "before_epochs": "before_epoch"}


def test_adding_a_callback_with_a_misspelt_event_warns(make_learner):
    learn = make_learner()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        learn.add_cbs(Misspelt())
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert re.match(r"Misspelt.after_batchs looks like an event .*did you mean 'after_batch'", messages[0])
    assert "Misspelt.before_epochs" in messages[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learn.add_cbs(tracer())  # correct names: no warning


class FastaiNames(Callback):
    def before_train(self, learn): pass
    def after_validate(self, learn): pass
    def after_pred(self, learn): pass
    def before_step(self, learn): pass


def test_fastai_event_names_get_the_name_minilearn_has_for_them(make_learner):
    assert misspelt_events(FastaiNames()) == {"after_pred": "after_predict", "after_validate": "after_epoch",
                                              "before_step": "after_backward", "before_train": "before_epoch"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_learner(cbs=FastaiNames())
    messages = sorted(str(w.message) for w in caught)
    assert messages[3] == ("FastaiNames.before_train is fastai's name for an event; minilearn calls this "
                           "'before_epoch' (with learn.training True), so it will never run")
    assert "minilearn calls this 'after_epoch' (with learn.training False)" in messages[1]
    assert "did you mean" not in " ".join(messages)
