"""MetricsCB's averages over a pass."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from minilearn import DataLoaders, Learner
from minilearn.callbacks import MetricsCB
from conftest import uneven_batches


def mae(preds, target):
    return (preds - target).abs().mean()


def test_metrics_are_batch_size_weighted_means_computed_by_hand():
    batches = uneven_batches([5, 5, 2])
    model = nn.Linear(3, 1)
    metrics = MetricsCB(mae=mae)
    learn = Learner(model, DataLoaders([], batches), F.mse_loss, cbs=metrics)
    learn.fit(1, train=False)
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        per_batch_mse = [F.mse_loss(model(b[0]), b[1]).item() for b in batches]
    row = metrics.history[0]
    assert row["phase"] == "valid" and row["epoch"] == 0
    assert row["loss"] == pytest.approx(F.mse_loss(model(x), y).item(), rel=1e-6)
    assert row["mae"] == pytest.approx((model(x) - y).abs().mean().item(), rel=1e-6)
    # weighted, not a plain mean of batch means
    assert row["loss"] != pytest.approx(sum(per_batch_mse) / 3, rel=1e-6)
    assert learn.epoch_metrics is row


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_the_epoch_average_does_not_depend_on_how_the_data_is_batched(sizes):
    data = uneven_batches([sum(sizes)])[0]
    splits = torch.split(torch.arange(sum(sizes)), sizes)
    batched = [(data[0][i], data[1][i]) for i in splits]
    model = nn.Linear(3, 1)
    a, b = MetricsCB(mae=mae), MetricsCB(mae=mae)
    Learner(model, DataLoaders([], batched), F.mse_loss, cbs=a).fit(1, train=False)
    Learner(model, DataLoaders([], [data]), F.mse_loss, cbs=b).fit(1, train=False)
    assert a.history[0]["loss"] == pytest.approx(b.history[0]["loss"], rel=1e-5)
    assert a.history[0]["mae"] == pytest.approx(b.history[0]["mae"], rel=1e-5)


def test_metrics_accumulate_on_the_device_without_reading_values_in_the_batch_loop(monkeypatch):
    # Reading a tensor's value (item, float, tolist) forces a host sync on a GPU; none may happen
    # between the first and last batch of an epoch.
    calls = []
    metrics = MetricsCB(mae=mae)
    learn = Learner(nn.Linear(3, 1), DataLoaders(uneven_batches([4] * 5), []), F.mse_loss, cbs=metrics)
    orig_item, orig_float, orig_tolist = torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append("item") or orig_item(self))
    monkeypatch.setattr(torch.Tensor, "__float__", lambda self: calls.append("float") or orig_float(self))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append("tolist") or orig_tolist(self))
    learn.fit(1, valid=False)
    assert calls == ["tolist"]  # every sum of the pass, read in one go at its end


def test_empty_epoch_gives_a_row_without_values():
    metrics = MetricsCB()
    Learner(nn.Linear(3, 1), DataLoaders([], []), F.mse_loss, cbs=metrics).fit(1)
    assert metrics.history == [{"epoch": 0, "phase": "train"}, {"epoch": 0, "phase": "valid"}]


def test_a_loss_that_changes_kind_within_a_pass_is_an_error_naming_both_kinds():
    # A ratio's parts, a sum and a mean cannot be added into one epoch figure.
    from minilearn import NormalizedLoss

    calls = []

    def loss(preds, target):
        calls.append(1)
        err = ((preds - target) ** 2).sum()
        return NormalizedLoss(err, torch.tensor(len(target))).as_tensor() if len(calls) == 1 else err / len(target)

    learn = Learner(nn.Linear(3, 1), DataLoaders([], uneven_batches([4, 4])), loss, cbs=MetricsCB())
    with pytest.raises(ValueError, match="the loss was a ratio for earlier batches of this pass and is a mean now"):
        learn.fit(1, train=False)
    calls[:] = [1]  # usable afterwards: every batch a mean now
    learn.fit(1, train=False)
    assert learn.epoch_metrics["loss"] > 0
