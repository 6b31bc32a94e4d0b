"""check_callback: deliberately wrong callbacks fail the right check with the right explanation, the
callback library passes, and the misspelt-event warning fires wherever a callback joins a Learner."""

import warnings

import pytest
import torch
import torch.nn.functional as F
# The Accelerate state reset of the Accelerate tests; `fresh_accelerate` is an autouse fixture there and here.

from minilearn import Callback, Learner, MisspeltEventWarning, misspelt_events
from minilearn.callbacks import (AccelerateCB, GradClipCB, LossCB, MetricsCB, OneCycleCB, Recorder, SingleBatchCB,
                                 TrainCB)
from minilearn.testing import check_callback, tiny_learner

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh


def by_name(report):
    return {c.name: c for c in report.checks}


class LossLogger(Callback):
    """Correct: keeps the training loss of every batch."""

    def before_fit(self, learn): self.losses = []

    def after_loss(self, learn):
        if learn.training:
            self.losses.append(learn.loss.item())


def test_a_correct_callback_passes_every_check():
    cb = LossLogger()
    report = check_callback(cb)
    assert bool(report), str(report)
    assert [c.name for c in report.checks] == ["events", "signatures", "steps", "fit", "invariants", "restored"]
    assert by_name(report)["events"].explanation == "listens to before_fit, after_loss"
    assert by_name(report)["steps"].explanation == "takes over no step"
    assert len(cb.losses) == 2  # two training batches


@pytest.mark.parametrize("make", [MetricsCB, Recorder, lambda: OneCycleCB(0.1), lambda: GradClipCB(1.0), SingleBatchCB,
                                  lambda: LossCB(F.cross_entropy), AccelerateCB], ids=lambda f: getattr(f, "__name__", ""))
def test_the_callback_library_passes(make):
    report = check_callback(make())
    assert report, str(report)


class Misspelt(Callback):
    def after_batchs(self, learn): pass
    def before_epochs(self, learn): pass
    def get_losss(self, learn): pass


def test_misspelt_events_and_steps_fail_events_with_the_nearest_name():
    report = check_callback(Misspelt())
    assert [c.name for c in report.failed] == ["events"]
    text = report.failed[0].explanation
    for wrong, right in [("after_batchs", "after_batch"), ("before_epochs", "before_epoch"), ("get_losss", "get_loss")]:
        assert f"Misspelt.{wrong} is not an event, so it never runs (did you mean '{right}'?)" in text


def test_helper_methods_are_not_taken_for_misspelt_events():
    class Helpers(Callback):
        def stop(self): pass
        def plot_loss(self): pass
        def _after_batch_stats(self): pass
    assert misspelt_events(Helpers()) == {}


class TypoStep(Callback):
    def get_losss(self, learn): pass


def test_adding_a_misspelt_callback_to_any_learner_warns():
    for add in (lambda cb: tiny_learner(cbs=cb), lambda cb: tiny_learner().fit(1, cbs=cb),
                lambda cb: tiny_learner().added_cbs(cb).__enter__()):
        with pytest.warns(MisspeltEventWarning, match=r"TypoStep.get_losss looks like an event or step .*'get_loss'"):
            add(TypoStep())


def test_check_callback_reports_misspelt_events_without_also_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", MisspeltEventWarning)
        check_callback(Misspelt())


class EvalInTraining(Callback):
    """Switches the model to eval mode to look at something after the loss, and forgets to switch back."""

    def after_loss(self, learn): learn.model.eval()


def test_a_callback_that_leaves_the_model_in_eval_mode_fails_invariants():
    report = check_callback(EvalInTraining())
    assert [c.name for c in report.failed] == ["invariants"]
    assert report.failed[0].explanation.startswith("the model was in eval mode at after_loss of a training batch")
    # Learner.fit restores the mode when it ends: only a look during the fit catches it.
    assert by_name(report)["restored"].passed


class GradOffInBatches(Callback):
    def before_batch(self, learn): torch.set_grad_enabled(False)


class GradOffForGood(Callback):
    def before_fit(self, learn): torch.set_grad_enabled(False)


def test_a_callback_that_switches_gradients_off_in_batches_fails_invariants():
    report = check_callback(GradOffInBatches())
    assert "gradients were off at before_batch of a training batch" in by_name(report)["invariants"].explanation
    assert torch.is_grad_enabled()


def test_a_callback_that_leaves_gradients_off_after_fit_fails_restored():
    try:
        report = check_callback(GradOffForGood())
    finally:
        torch.set_grad_enabled(True)
    assert [c.name for c in report.failed] == ["restored"]
    assert "torch.is_grad_enabled() was True before fit and False after" in report.failed[0].explanation


class Raiser(Callback):
    def after_backward(self, learn): raise NotImplementedError("write the callback")


def test_a_callback_that_raises_fails_fit_naming_the_method_and_event_and_the_learner_stays_usable():
    learn = tiny_learner()
    cbs = list(learn.cbs)
    report = check_callback(Raiser(), learn)
    assert [c.name for c in report.failed] == ["fit"]
    assert report.failed[0].explanation == ("Raiser.after_backward raised NotImplementedError: write the callback "
                                            "(during after_backward of training batch 0)")
    assert learn.cbs == cbs and learn.model.training
    learn.fit(1)


class LosesPreds(Callback):
    def after_predict(self, learn): learn.preds = None


def test_an_exception_raised_elsewhere_names_where_it_surfaced():
    report = check_callback(LosesPreds())
    text = by_name(report)["fit"].explanation
    assert text.startswith("TrainCB.get_loss raised TypeError") and text.endswith("(during get_loss of training batch 0)")


class OwnLoss(Callback):
    order = 10

    def get_loss(self, learn): learn.loss = F.cross_entropy(learn.preds, learn.batch[1])


class LowBackward(Callback):
    order = -1

    def backward(self, learn): learn.loss.backward()


def test_steps_report_what_is_taken_over_and_what_never_runs():
    assert by_name(check_callback(OwnLoss()))["steps"].explanation == "takes over get_loss from TrainCB (order 0)"
    report = check_callback(LowBackward())
    assert [c.name for c in report.failed] == ["steps"]
    assert report.failed[0].explanation == ("defines backward but TrainCB (order 0) owns it, so LowBackward.backward "
                                            "never runs: give LowBackward an order above 0 to take it over")


class OwnPredict(Callback):
    def predict(self, learn): learn.preds = learn.model(learn.batch[0])


def test_a_step_nobody_owned_is_reported_as_such():
    learn = tiny_learner()
    learn.remove_cbs(TrainCB)
    assert by_name(check_callback(OwnPredict(), learn))["steps"].explanation == "takes over predict from no callback"


class NoLearnerArgument(Callback):
    def after_batch(self): pass


def test_an_event_method_without_the_learner_argument_fails_signatures_and_fit():
    report = check_callback(NoLearnerArgument())
    assert [c.name for c in report.failed] == ["signatures", "fit"]
    assert "NoLearnerArgument.after_batch cannot be called as method(learn)" in report.failed[0].explanation
    assert report.failed[1].explanation.startswith("NoLearnerArgument.after_batch raised TypeError: ")
    assert report.failed[1].explanation.endswith("(during after_batch of training batch 0)")


class SwapsLoss(Callback):
    def before_fit(self, learn): learn.loss_func = F.nll_loss


class LeaksHook(Callback):
    def before_fit(self, learn): learn.model.register_forward_hook(lambda m, i, o: None)


class AddsAnother(Callback):
    def before_fit(self, learn): learn.add_cbs(Callback())


class Freezes(Callback):
    def before_fit(self, learn): learn.model[0].weight.requires_grad_(False)


@pytest.mark.parametrize("cb, what", [
    (SwapsLoss(), "learn.loss_func was cross_entropy before fit and nll_loss after"),
    (LeaksHook(), "hooks on the model was 0 before fit and 1 after"),
    (AddsAnother(), "learn.cbs was [TrainCB] before fit and [TrainCB, Callback] after"),
    (Freezes(), "requires_grad of the parameters was (True, True, True, True) before fit and (False, True, True, True)"),
], ids=lambda x: x.name if isinstance(x, Callback) else "")
def test_state_not_restored_after_fit_fails_restored(cb, what):
    report = check_callback(cb)
    assert [c.name for c in report.failed] == ["restored"]
    assert what in report.failed[0].explanation and "undo in cleanup_fit" in report.failed[0].explanation


def test_a_given_learner_runs_two_training_batches_and_keeps_its_data():
    learn = tiny_learner(n_train_batches=5)
    dls, cb = learn.dls, LossLogger()
    assert check_callback(cb, learn)
    assert len(cb.losses) == 2 and learn.dls is dls and len(learn.dls.train) == 5


def test_a_callback_class_instead_of_an_instance_is_a_clear_error():
    with pytest.raises(TypeError, match=r"got <class .*LossLogger'> of type type \(a class: pass an instance"):
        check_callback(LossLogger)


def test_the_tiny_learner_is_the_same_for_the_same_seed_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = tiny_learner(seed=3), tiny_learner(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert isinstance(a, Learner) and len(a.dls.train) == 2 and len(a.dls.valid) == 1


class ClippingNorms(Callback):
    """Records the gradient norm with clip_grad_norm_, which also clips the gradients in place."""

    def before_fit(self, learn): self.norms = []

    def after_backward(self, learn):
        self.norms.append(torch.nn.utils.clip_grad_norm_(learn.model.parameters(), 0.05).item())


class DoublesTheLoss(Callback):
    def after_loss(self, learn): learn.loss = learn.loss * 2


class NudgesABias(Callback):
    def after_step(self, learn):
        with torch.no_grad():
            learn.model[0].bias.add_(0.01)


def test_a_callback_that_clips_the_gradients_passes_unless_it_must_only_observe():
    assert check_callback(ClippingNorms())
    report = check_callback(ClippingNorms(), observes=True)
    assert [c.name for c in report.failed] == ["observes"]
    explanation = report.failed[0].explanation
    assert explanation.startswith("ClippingNorms changes what training computes, against the same fit without it: ")
    assert "the gradient of 0.weight at training batch 0 differs by up to " in explanation
    assert "after the fit differs by up to" in explanation and "clip_grad_norm_" in explanation


@pytest.mark.parametrize("cb, says", [
    (DoublesTheLoss(), "the loss of training batch 0 is "),
    (NudgesABias(), "the loss of training batch 1 is "),

])
def test_a_callback_that_changes_the_loss_or_the_weights_fails_observes_naming_it(cb, says):
    explanation = by_name(check_callback(cb, observes=True))["observes"].explanation
    assert says in explanation and "without;" in explanation
    without, with_cb = (float(v) for v in explanation.split(says)[1].split(" without")[0].split(" with it, "))
    assert without != with_cb


def dropout_learner():
    """A tiny learner with dropout and AdamW: an observer's fit must see the same masks and optimizer moments."""
    learn = tiny_learner()
    torch.manual_seed(0)
    learn.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    learn.opt_func = torch.optim.AdamW
    learn.fit(1)  # the optimizer has moments before the check
    return learn


def test_an_observer_passes_observes_and_the_learner_ends_as_after_one_fit_with_it():
    learn, alone = dropout_learner(), dropout_learner()
    torch.manual_seed(1)
    report = check_callback(LossLogger(), learn, observes=True)
    after_check = torch.random.get_rng_state()
    assert report, str(report)
    assert [c.name for c in report.checks][3:5] == ["fit", "observes"]
    torch.manual_seed(1)
    alone.fit(1)
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), alone.model.parameters()))
    assert torch.equal(after_check, torch.random.get_rng_state())  # the fit without it drew from a copy
