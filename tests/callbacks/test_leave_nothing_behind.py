"""Swap anything, leave nothing behind: every shipped callback, added for one fit (or kept and then
removed), leaves the learner as it found it; a plain fit after a temporary one trains exactly like a
learner that never had it."""

import copy
import inspect
from functools import partial

import pytest
import torch
# The Accelerate state reset of the Accelerate tests; `fresh_accelerate` is an autouse fixture there and here.

import minilearn.callbacks as callbacks
from minilearn import Callback, DataLoaders, Learner
from minilearn.callbacks import (AccelerateCB, AccelerateCustomCB, BatchSchedCB, CSVLoggerCB, DeviceCB, EarlyStoppingCB,
                                 GradClipCB, LogprobLossCB, LossCB, LRFinderCB, MetricsCB, OneCycleCB, SaveModelCB,
                                 RolloutCB, TrackerCB)
from minilearn.losses import PolicyGradientLoss, WeightedCrossEntropy, make_variance_loss
from minilearn.sampling import make_rollouts
from minilearn.demo.tiny_model import TinyCausalLM
from minilearn.testing import check_callback, learner_fingerprint, left_behind, tiny_learner

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh

V, T = 11, 6


def lm_batches(n_batches=3, bs=4, seed=0):
    """Padded dict batches with the names the token losses and log-probability losses take."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, V, (bs, T), generator=g)
        mask = (torch.arange(T)[None] < torch.randint(3, T + 1, (bs, 1), generator=g)).long()
        targets = torch.where(mask.bool(), ids.roll(-1, 1), -100)
        targets[:, -1] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "target_tokens": targets,
                    "weights": torch.rand(bs, T, generator=g)})
    return out


def lm_learner(opt_func=torch.optim.AdamW, seed=0):
    torch.manual_seed(seed)
    model = TinyCausalLM(V, dim=16, n_layers=1, n_heads=2, max_len=T)
    batches = lm_batches()
    return Learner(model, DataLoaders(batches[:2], batches[2:]), WeightedCrossEntropy(), lr=0.01, opt_func=opt_func)


def completion_length(prompts, completions):
    return [float(len(c)) for c in completions]


def rollout_cb():
    torch.manual_seed(1)
    ref = TinyCausalLM(V, dim=16, n_layers=1, n_heads=2, max_len=T)
    return RolloutCB([[1, 2], [3, 4, 5]], completion_length, group_size=2, max_new_tokens=3, eos_token_id=0,
                     ref_model=ref)


def rollout_learner(cb, opt_func=torch.optim.AdamW, seed=0):
    """An RL learner whose training loader reads `cb`'s buffer, filled once so it trains without `cb` too."""
    torch.manual_seed(seed)
    model = TinyCausalLM(V, dim=16, n_layers=1, n_heads=2, max_len=T)
    cb.buffer.fill(make_rollouts(model, cb.prompts, completion_length, 2, 3, eos_token_id=0, ref_model=cb.ref_model,
                                 generator=torch.Generator().manual_seed(0)))
    loss = PolicyGradientLoss("ppo", kl_coef=0.1, aggregation="sequence_mean")
    return Learner(model, DataLoaders(torch.utils.data.DataLoader(cb.buffer, batch_size=2), []), loss, lr=0.01,
                   opt_func=opt_func)


def learner_and_cbs(name, make, opt_func=torch.optim.AdamW):
    """The learner a case trains and its callbacks: RolloutCB needs a loader on its own buffer."""
    cbs = make()
    return (rollout_learner(cbs[0], opt_func) if name == "RolloutCB" else lm_learner(opt_func)), cbs


# Callbacks whose constructor needs arguments; every other one in minilearn.callbacks.__all__ is
# built with none. A new callback with required arguments must be added here (the test says so).
def with_arguments(tmp_path):
    """Each entry: ways to build the callbacks of one case (built when the case runs, since each
    AccelerateCB takes over Accelerate's process-wide state)."""
    return {
        "AccelerateCB": [lambda: [AccelerateCB()],
                         lambda: [AccelerateCB(mixed_precision="bf16", gradient_accumulation_steps=2)]],
        "AccelerateCustomCB": [lambda: [AccelerateCustomCB(WeightedCrossEntropy())],
                               lambda: [AccelerateCustomCB(WeightedCrossEntropy(), mixed_precision="bf16")]],
        "LRFinderCB": [lambda: [LRFinderCB(num_it=3)]],
        "DeviceCB": [lambda: [DeviceCB("cpu")]],
        "BatchSchedCB": [lambda: [BatchSchedCB(partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))]],
        "OneCycleCB": [lambda: [OneCycleCB(0.05)]],
        "GradClipCB": [lambda: [GradClipCB(0.5)]],
        "LossCB": [lambda: [LossCB(WeightedCrossEntropy())]],
        "LogprobLossCB": [lambda: [LogprobLossCB(make_variance_loss())],
                          lambda: [LogprobLossCB(make_variance_loss(), two_pass=True)]],
        "SaveModelCB": [lambda: [MetricsCB(), SaveModelCB(every_epoch=True, path=tmp_path / "ckpt")]],
        "EarlyStoppingCB": [lambda: [MetricsCB(), EarlyStoppingCB(patience=1)]],
        "CSVLoggerCB": [lambda: [MetricsCB(), CSVLoggerCB(tmp_path / "history.csv")]],
        "TrackerCB": [lambda: [MetricsCB(), TrackerCB(logging_dir=tmp_path / "runs")]],
        "RolloutCB": [lambda: [rollout_cb()]],
    }


SHIPPED = [n for n in callbacks.__all__ if isinstance(getattr(callbacks, n), type)
           and issubclass(getattr(callbacks, n), Callback)]


def cases_for(name, tmp_path):
    special = with_arguments(tmp_path)
    if name in special:
        return special[name]
    cls = getattr(callbacks, name)
    required = [p for p in list(inspect.signature(cls).parameters.values())
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not required, f"{name} needs arguments {[p.name for p in required]}: add it to with_arguments()"
    return [lambda: [cls()]]


def test_every_shipped_callback_is_covered():
    assert len(SHIPPED) >= 15 and "AccelerateCustomCB" in SHIPPED and "Monitor" not in SHIPPED


@pytest.mark.parametrize("opt_func", [torch.optim.AdamW, partial(torch.optim.SGD, momentum=0.9, weight_decay=0.01)],
                         ids=["AdamW", "SGD-momentum"])
@pytest.mark.parametrize("name", SHIPPED)
def test_a_temporary_callback_leaves_the_learner_as_it_found_it(name, opt_func, tmp_path):
    for make in cases_for(name, tmp_path):
        learn, cbs = learner_and_cbs(name, make, opt_func)
        learn.fit(1)  # builds the optimizer: what is compared below is what the callback changes
        before = learner_fingerprint(learn)
        learn.fit(2, cbs=cbs)
        assert left_behind(before, learner_fingerprint(learn)) == [], cbs
        # The same through `added_cbs`.
        with learn.added_cbs(cbs):
            learn.fit(2)
        assert left_behind(before, learner_fingerprint(learn)) == [], cbs


@pytest.mark.parametrize("name", SHIPPED)
def test_a_kept_callback_restores_when_removed(name, tmp_path):
    for make in cases_for(name, tmp_path):
        learn, cbs = learner_and_cbs(name, make)
        learn.fit(1)
        before = learner_fingerprint(learn)
        learn.add_cbs(cbs)
        learn.fit(1)
        learn.fit(1)  # kept across fits: an AccelerateCB is prepared once
        learn.remove_cbs(cbs)
        assert left_behind(before, learner_fingerprint(learn)) == [], cbs


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def never_had_it(learn):
    """A learner with `learn`'s weights and optimizer moments, but the hyperparameters a fresh
    optimizer has: what `learn` must be like after a temporary callback."""
    twin = lm_learner(learn.opt_func)
    twin.model.load_state_dict(learn.model.state_dict())
    twin.opt = twin.opt_func(twin.model.parameters(), lr=twin.lr)
    hypers = [{k: v for k, v in g.items() if k != "params"} for g in twin.opt.param_groups]
    # A copy of the moments (load_state_dict would share the tensors), and of the hyperparameters, put back below.
    twin.opt.load_state_dict(copy.deepcopy(learn.opt.state_dict()))
    for group, h in zip(twin.opt.param_groups, hypers):
        group.update(h)
    return twin


@pytest.mark.parametrize("opt_func", [torch.optim.AdamW, partial(torch.optim.SGD, momentum=0.9)],
                         ids=["AdamW", "SGD-momentum"])
@pytest.mark.parametrize("make_cb", [lambda: OneCycleCB(0.05),
                                     lambda: AccelerateCustomCB(WeightedCrossEntropy(), mixed_precision="bf16"),
                                     lambda: AccelerateCB(gradient_accumulation_steps=2)],
                         ids=["OneCycleCB", "AccelerateCustomCB-bf16", "AccelerateCB-accumulation"])
def test_a_plain_fit_after_a_temporary_callback_trains_like_a_learner_that_never_had_it(make_cb, opt_func):
    learn = lm_learner(opt_func)
    learn.fit(1, cbs=make_cb())
    twin = never_had_it(learn)
    learn.fit(2)
    twin.fit(2)
    for a, b in zip(weights(learn.model), weights(twin.model)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_after_a_bf16_fit_the_model_runs_in_float32_outside_autocast():
    learn = lm_learner()
    model, dls, opt_func = learn.model, learn.dls, learn.opt_func
    learn.fit(1, cbs=AccelerateCustomCB(WeightedCrossEntropy(), mixed_precision="bf16"))
    assert learn.model is model and learn.dls is dls and "forward" not in vars(model)
    x = lm_batches(1)[0]["input_ids"]
    with torch.no_grad():
        out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model.__class__.forward(model, x), rtol=0, atol=0)
    assert not torch.is_autocast_enabled("cpu") and learn.opt_func is opt_func


def test_fit_starts_at_learn_lr_even_if_something_left_the_optimizer_elsewhere():
    learn = lm_learner()
    learn.fit(1)
    for g in learn.opt.param_groups:
        g["lr"] = 123.0
    seen = []

    class LookAtLr(Callback):
        def before_batch(self, learn): seen.append(learn.opt.param_groups[0]["lr"])

    learn.fit(1, cbs=LookAtLr())
    assert set(seen) == {learn.lr}


def test_a_schedule_stopped_by_an_error_still_puts_the_hyperparameters_back():
    learn = lm_learner(partial(torch.optim.SGD, momentum=0.9))
    learn.fit(1)
    before = learner_fingerprint(learn)

    class Boom(Callback):
        order = 100
        def after_step(self, learn): raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[OneCycleCB(0.05), Boom()])
    assert left_behind(before, learner_fingerprint(learn)) == []


class LeavesTheLrChanged(Callback):
    """A student's schedule that forgets to put the learning rate back."""
    def before_batch(self, learn):
        for g in learn.opt.param_groups:
            g["lr"] = 0.001


class PatchesForward(Callback):
    def before_fit(self, learn):
        plain = learn.model.forward
        learn.model.forward = lambda *a, **k: plain(*a, **k) * 1.0


class AddsAnAttribute(Callback):
    def before_fit(self, learn): learn.my_note = "hello"


class SwapsTheData(Callback):
    def before_fit(self, learn): learn.dls = DataLoaders(list(learn.dls.train), list(learn.dls.valid))


@pytest.mark.parametrize("cb, what", [
    (LeavesTheLrChanged(), "optimizer hyperparameters changed: param group 0 lr 0.1 -> 0.001"),
    (PatchesForward(), "the model's forward was the one of its class before fit and an instance attribute"),
    (AddsAnAttribute(), "attributes of the learner: added ['my_note']"),
    (SwapsTheData(), "learn.dls was DataLoaders object at"),

], ids=lambda x: type(x).__name__ if isinstance(x, Callback) else "")
def test_check_callback_names_what_a_callback_left_behind(cb, what):
    report = check_callback(cb)
    assert [c.name for c in report.failed] == ["restored"]
    assert what in report.failed[0].explanation, report.failed[0].explanation


def test_check_callback_passes_the_shipped_schedules():
    assert check_callback(OneCycleCB(0.05), learn=tiny_learner())
    opt_learner = tiny_learner()
    opt_learner.opt_func = partial(torch.optim.SGD, momentum=0.9)
    assert check_callback(OneCycleCB(0.05), learn=opt_learner)


def test_removing_a_kept_accelerate_callback_after_the_user_replaced_the_model_keeps_the_new_model():
    learn = lm_learner()
    cb = AccelerateCustomCB(WeightedCrossEntropy(), mixed_precision="bf16")
    first = learn.model
    learn.add_cbs(cb)
    learn.fit(1)
    new_model = lm_learner(seed=1).model
    learn.model = new_model
    learn.fit(1)  # prepares the new model; the first one gets its own forward back
    assert "forward" not in vars(first)
    learn.remove_cbs(cb)
    assert learn.model is new_model and "forward" not in vars(new_model)


def test_what_kept_callbacks_refresh_is_not_taken_for_something_left_behind():
    learn = tiny_learner(cbs=[callbacks.MetricsCB(), callbacks.Recorder()])
    learn.fit(1)
    before = learner_fingerprint(learn)
    learn.fit(1)  # a new epoch_metrics row, the same kind of thing
    assert left_behind(before, learner_fingerprint(learn)) == []


def test_a_temporary_callback_that_leaves_its_row_on_the_learner_is_named():
    class KeepsItsRow(callbacks.MetricsCB):
        def removed(self, learn): pass

    learn = tiny_learner()
    learn.fit(1)
    before = learner_fingerprint(learn)
    learn.fit(1, cbs=KeepsItsRow())
    assert left_behind(before, learner_fingerprint(learn)) == ["learn.epoch_metrics was None before fit and a dict after"]
