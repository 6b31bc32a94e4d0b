"""AccelerateCB and AccelerateCustomCB in one process: same results as the plain loop, exact
normalisation under gradient accumulation, bf16 on CPU with float32 losses, state, and errors."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import Callback, DataLoaders, Learner, NormalizedLoss
from minilearn.callbacks import AccelerateCB, AccelerateCustomCB, GradClipCB, MetricsCB, ProgressCB, reset_accelerate_state


pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh


class WeightedCE(nn.Module):
    """-(sum w lp) / (sum w), returned as a NormalizedLoss with a metric."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, logits, target, weights):
        self.seen.append((logits.dtype, torch.is_autocast_enabled("cpu")))
        lp = torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]
        return NormalizedLoss(-(weights * lp).sum(), weights.sum(), {"weight_sum": weights.sum()})


def data(weights, n_feat=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(weights)
    return TensorDataset(torch.randn(n, n_feat, generator=g), torch.randint(0, 3, (n,), generator=g),
                         torch.tensor(weights, dtype=torch.float32))


def model(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def weights_after(ds, bs, cbs=(), epochs=2, loss=None, lr=0.5):
    m = model()
    learn = Learner(m, DataLoaders(DataLoader(ds, batch_size=bs), []), loss or WeightedCE(), lr=lr, cbs=list(cbs))
    learn.fit(epochs)
    return [p.detach().clone() for p in m.parameters()]


def assert_close(a, b, tol=1e-6):
    for p, q in zip(a, b):
        assert torch.allclose(p, q, atol=tol, rtol=0), (p - q).abs().max()


def test_accelerate_cb_gives_the_plain_loop_weights():
    ds = data([1.0] * 48)
    plain = weights_after(ds, 16, loss=lambda logits, y, w: F.cross_entropy(logits, y))
    reset_accelerate_state()
    acc = weights_after(ds, 16, [AccelerateCB()], loss=lambda logits, y, w: F.cross_entropy(logits, y))
    assert_close(plain, acc, 0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.just(0.0), st.floats(0.01, 10.0)), min_size=32, max_size=32))
def test_accumulation_steps_give_the_weights_of_the_whole_global_batch(weights):
    ds = data(weights)
    reset_accelerate_state()
    ref = weights_after(ds, 16)  # plain loop, global batch 16
    for gas in (1, 2, 4):
        reset_accelerate_state()
        got = weights_after(ds, 16 // gas, [AccelerateCB(gradient_accumulation_steps=gas)])
        assert_close(got, ref, 1e-5)


class StepIters(Callback):
    """Records the batch index of every optimizer step."""

    def __init__(self):
        self.iters = []

    def after_step(self, learn):
        self.iters.append(learn.iter)


@pytest.mark.parametrize("n, expected", [(32, [3, 7]),
                                         (24, [3, 5])])  # 6 micro-batches: the end of the data closes a short cycle
def test_accumulation_steps_once_per_boundary_so_schedules_see_real_steps(n, expected):
    steps = StepIters()
    weights_after(data([1.0] * n), 4, [AccelerateCB(gradient_accumulation_steps=4), steps], epochs=1)
    assert steps.iters == expected


def test_custom_loss_and_metrics_reach_metrics_cb_and_the_progress_table(capsys):
    ds = data([0.5, 2.0, 1.0, 0.0] * 8)
    loss = WeightedCE()
    metrics = MetricsCB()
    learn = Learner(model(), DataLoaders(DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8)),
                    cbs=[metrics, ProgressCB()])
    learn.fit(1, cbs=AccelerateCustomCB(loss))
    rows = metrics.history
    assert [r["phase"] for r in rows] == ["train", "valid"]
    assert rows[0]["weight_sum"] == pytest.approx(3.5 * 2, rel=1e-6)  # every batch of 8 sums to 7
    assert rows[1]["loss"] > 0
    out = capsys.readouterr().out
    assert "weight_sum" in out and "7.0000" in out
    assert learn.loss_func is None  # the loss lived on the callback, and reached the learner's metrics


def test_bf16_on_cpu_trains_and_the_loss_is_float32_outside_autocast():
    autocast_in_model = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model()

        def forward(self, x):
            autocast_in_model.append(torch.is_autocast_enabled("cpu"))
            return self.net(x).to(torch.bfloat16)  # even a half-precision output reaches the loss as float32

    ds = data([1.0] * 32)
    loss = WeightedCE()
    m = Probe()
    learn = Learner(m, DataLoaders(DataLoader(ds, batch_size=8), []), lr=0.5)
    before = [p.detach().clone() for p in m.parameters()]
    learn.fit(2, cbs=AccelerateCustomCB(loss, mixed_precision="bf16"))
    assert all(autocast_in_model)
    assert set(loss.seen) == {(torch.float32, False)}
    assert learn.loss.dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_prepares_once_and_prepares_a_new_optimizer():
    cb = AccelerateCB()
    calls = []
    for name in ("prepare_model", "prepare_optimizer", "prepare_data_loader"):
        orig = getattr(cb.acc, name)
        setattr(cb.acc, name, lambda *a, _o=orig, _n=name, **k: calls.append(_n) or _o(*a, **k))
    ds = data([1.0] * 16)
    learn = Learner(model(), DataLoaders(DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8)),
                    WeightedCE(), cbs=cb)
    learn.fit(1)
    learn.fit(1)
    assert sorted(calls) == ["prepare_data_loader", "prepare_data_loader", "prepare_model", "prepare_optimizer"]
    learn.fit(1, reset_opt=True)
    assert calls.count("prepare_optimizer") == 2
    assert learn.unwrapped_model is not None


def test_swapping_the_custom_loss_between_fits():
    ds = data([1.0] * 16)
    learn = Learner(model(), DataLoaders(DataLoader(ds, batch_size=8), []), lambda logits, y, w: F.cross_entropy(logits, y))
    first, second = WeightedCE(), WeightedCE()
    learn.fit(1, cbs=AccelerateCustomCB(first))
    learn.fit(1, cbs=AccelerateCustomCB(second, mixed_precision="bf16"))
    assert len(first.seen) == len(second.seen) == 2
    gradients = learn.gradients  # the learner's own, put back (not a new one) when a fit's AccelerateCB goes
    learn.fit(1, cbs=AccelerateCB(gradient_accumulation_steps=2))
    assert learn.gradients is gradients and learn.ends_step
    learn.fit(1)  # back to the plain loss and TrainCB
    assert learn.loss_parts is None and len(second.seen) == 2


def test_max_grad_norm_clips_after_normalisation():
    ds = data([3.0] * 16)
    norms = []
    cb = AccelerateCB(gradient_accumulation_steps=2, max_grad_norm=1e-3)
    orig_step = torch.optim.SGD.step
    learn = Learner(model(), DataLoaders(DataLoader(ds, batch_size=4), []), WeightedCE(), lr=0.0, cbs=cb)

    def recording_step(opt, *a, **k):
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in learn.model.parameters()]).item())
        return orig_step(opt, *a, **k)

    torch.optim.SGD.step = recording_step
    try:
        learn.fit(1)
    finally:
        torch.optim.SGD.step = orig_step
    assert len(norms) == 2 and all(n <= 1e-3 * (1 + 1e-4) for n in norms)


def test_zero_denominator_gives_zero_loss_and_zero_gradient():
    ds = data([0.0] * 16)
    before = [p.detach().clone() for p in model().parameters()]
    after = weights_after(ds, 4, [AccelerateCB(gradient_accumulation_steps=2)])
    assert_close(before, after, 0)


def test_mixing_normalized_and_plain_losses_in_one_step_is_refused():
    calls = []

    def flaky(logits, target, weights):
        calls.append(1)
        ce = F.cross_entropy(logits, target)
        return NormalizedLoss(ce, 1.0) if len(calls) % 2 else ce

    with pytest.raises(ValueError, match="the loss was a ratio for earlier micro-batches of this step and is a mean now"):
        weights_after(data([1.0] * 16), 4, [AccelerateCB(gradient_accumulation_steps=2)], loss=flaky)


def test_a_new_callback_gets_its_own_settings_and_a_stale_one_says_so():
    ds = data([1.0] * 16)
    learn = Learner(model(), DataLoaders(DataLoader(ds, batch_size=4), []), WeightedCE())
    first = AccelerateCB(gradient_accumulation_steps=2)
    second = AccelerateCB(gradient_accumulation_steps=4, mixed_precision="bf16")  # no clash, no reset needed
    assert second.gradient_accumulation_steps == 4 and second.acc.mixed_precision == "bf16"
    learn.fit(1, cbs=second)
    with pytest.raises(RuntimeError, match="another AccelerateCB was built since"):
        learn.fit(1, cbs=first)
    learn.fit(1)


def test_world_size_disagreement_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 .*num_processes=1.*cpu=True"):
        AccelerateCB(cpu=False)


def test_grad_clip_cb_under_accumulation_clips_each_step_once_as_max_grad_norm_does():
    # GradClipCB asks the learner whether the gradients are those of a whole step (learn.ends_step), and
    # AccelerateCB has normalised them by then: the same weights as Accelerate's own clipping.
    ds = data([1.0, 2.0, 0.5, 3.0, 1.0, 1.0, 2.0, 0.0, 1.0, 4.0])
    def fit(cbs):
        learn = Learner(model(), DataLoaders(DataLoader(ds, batch_size=2), []), WeightedCE(), lr=0.5, cbs=cbs)
        learn.fit(2)
        return [p.detach().clone() for p in learn.model.parameters()]
    clip = GradClipCB(0.05)
    by_callback = fit([AccelerateCB(gradient_accumulation_steps=2), clip])
    reset_accelerate_state()
    by_accelerate = fit([AccelerateCB(gradient_accumulation_steps=2, max_grad_norm=0.05)])
    reset_accelerate_state()
    unclipped = fit([AccelerateCB(gradient_accumulation_steps=2)])
    assert clip.last_norm > 0.05  # it did clip
    assert_close(by_callback, by_accelerate, 1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(by_callback, unclipped)) > 1e-3


# ---- accumulation windows end with the training pass ------------------------------------------------

def plain_ce(logits, target, weights):
    return F.cross_entropy(logits, target)


def sum_ce(logits, target, weights):
    from minilearn.normalized_loss import LossTensor
    return LossTensor.of_sum(-(weights * torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]).sum())


def window_reference(batches, loss, k, epochs, lr):
    """A hand-written loop: windows of k consecutive micro-batches, the last one of each pass as long as
    what is left; a ratio gets sum of totals / sum of denominators, a sum its sum, a plain loss the mean
    of its micro-batch values over the window."""
    m = model().double()
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    for _ in range(epochs):
        for start in range(0, len(batches), k):
            window = batches[start:start + k]
            outs = [loss(m(x), y, w) for x, y, w in window]
            if isinstance(outs[0], NormalizedLoss):
                total = sum(o.total for o in outs) / sum(o.denominator for o in outs)
            elif getattr(outs[0], "is_sum", False):
                total = sum(outs)
            else:
                total = sum(outs) / len(window)
            total.backward()
            opt.step()
            opt.zero_grad()
    return list(m.parameters())


@pytest.mark.parametrize("n_batches", [7, 12])
@pytest.mark.parametrize("loader", ["DataLoader", "list"])
@pytest.mark.parametrize("kind", ["plain", "ratio", "sum"])
def test_a_short_window_at_the_end_of_a_pass_steps_normalised_by_its_own_micro_batches(n_batches, loader, kind):
    ds = data([0.5, 2.0, 1.0, 0.0, 3.0, 1.5] * 2 * n_batches)
    ds = TensorDataset(ds.tensors[0].double(), ds.tensors[1], ds.tensors[2].double())
    loss = {"plain": plain_ce, "ratio": WeightedCE(), "sum": sum_ce}[kind]
    dl = DataLoader(ds, batch_size=12)
    train = dl if loader == "DataLoader" else list(dl)
    steps = StepIters()
    learn = Learner(model().double(), DataLoaders(train, []), loss, lr=0.1,
                    cbs=[AccelerateCB(gradient_accumulation_steps=5), steps])
    learn.fit(2)
    # 7 micro-batches: windows 5 + 2 in each epoch; 12: 5 + 5 + 2. None crosses into the next epoch.
    assert steps.iters == [4, n_batches - 1] * 2 if n_batches == 7 else [4, 9, 11] * 2
    ref = window_reference(list(dl), loss, 5, 2, 0.1)
    assert_close(learn.model.parameters(), ref, 1e-12)


def test_a_training_loader_without_a_length_is_refused_when_windows_must_end_with_it():
    batches = list(DataLoader(data([1.0] * 8), batch_size=4))
    learn = Learner(model(), DataLoaders((b for b in batches), []), WeightedCE())
    with pytest.raises(TypeError, match=r"gradient_accumulation_steps=2\) needs to know where a training pass ends.*"
                                        r"\(generator\) has no len\(\)"):
        learn.fit(1, cbs=AccelerateCB(gradient_accumulation_steps=2))
    learn.dls = DataLoaders(batches, [])
    learn.fit(1, cbs=AccelerateCB(gradient_accumulation_steps=2))  # the learner is still usable


def test_float16_where_it_cannot_run_says_so():
    with pytest.warns(UserWarning, match=r"mixed_precision='fp16' cannot run on cpu: .*trains in float32.*'bf16'"):
        AccelerateCB(mixed_precision="fp16")


def test_one_process_keeps_its_random_stream_unless_a_seed_is_given():
    ds = data([1.0] * 8)
    draws = []
    for accelerate in (False, True):
        reset_accelerate_state()
        cbs = [AccelerateCB()] if accelerate else []
        Learner(model(), DataLoaders(DataLoader(ds, batch_size=4), []), WeightedCE(), cbs=cbs).fit(1)
        draws.append(torch.rand(3))
    assert torch.equal(*draws)
    reset_accelerate_state()
    Learner(model(), DataLoaders(DataLoader(ds, batch_size=4), []), WeightedCE()).fit(1, cbs=AccelerateCB(seed=5))
    assert torch.initial_seed() == 5


# ---- a user's own subclass, in the textbook form ------------------------------------------------------

class TextbookAccelerateCB(AccelerateCB):
    """As in a course: the loss on the learner, and the accelerator's backward."""

    def get_loss(self, learn):
        learn.loss = learn.loss_func(learn.preds, *learn.batch[1:])

    def backward(self, learn):
        self.acc.backward(learn.loss)


def test_a_textbook_subclass_of_accelerate_cb_trains_as_the_plain_loop_also_under_accumulation():
    # Its backward bypasses learn.gradients, so its loss counts as a plain mean: the step's gradient is the
    # mean over the window's micro-batches, which for equal micro-batches is the plain loop's on the whole batch.
    g = torch.Generator().manual_seed(3)
    ds = TensorDataset(torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g))
    def fit(bs, cbs):
        learn = Learner(model(), DataLoaders(DataLoader(ds, batch_size=bs), DataLoader(ds, batch_size=8)),
                        F.cross_entropy, lr=0.5, cbs=[MetricsCB(), *cbs])
        learn.fit(2)
        return learn, [p.detach().clone() for p in learn.model.parameters()]
    plain, expected = fit(4, [])
    for accumulation, bs in ((1, 4), (2, 2)):
        reset_accelerate_state()
        learn, got = fit(bs, [TextbookAccelerateCB(gradient_accumulation_steps=accumulation)])
        assert learn.step_owners["get_loss"].name == "TextbookAccelerateCB"
        assert_close(got, expected, 1e-6)
        assert learn.epoch_metrics["loss"] == pytest.approx(plain.epoch_metrics["loss"], rel=1e-5)
