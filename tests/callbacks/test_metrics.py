"""MetricsCB's averages, Recorder's record and plot, and ProgressCB's table."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from minilearn import DataLoaders, Learner
from minilearn.callbacks import MetricsCB, ProgressCB, Recorder


def mae(preds, target):
    return (preds - target).abs().mean()


def uneven_batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)) for n in sizes]


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


def test_recorder_records_lr_and_loss_of_each_training_batch_and_plots():
    batches = uneven_batches([4] * 5)
    rec = Recorder()
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches, batches[:2]), F.mse_loss, lr=0.01,
                    cbs=[MetricsCB(), rec])
    learn.fit(2)
    assert learn.recorder is rec
    assert rec.lrs == [0.01] * 10 and len(rec.losses) == 10
    assert [i for i, _ in rec.valid_losses] == [5, 10]
    ax = rec.plot_loss()
    assert len(ax.lines) == 2 and list(ax.lines[0].get_ydata()) == rec.losses
    rec.plot_lr()


def test_progress_prints_the_table(capsys):
    batches = uneven_batches([4] * 5)
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches, batches[:2]), F.mse_loss,
                    cbs=[MetricsCB(mae=mae), ProgressCB(plot=True)])
    learn.fit(2)
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if "phase" in line]
    assert header and header[0].split()[-5:] == ["epoch", "phase", "loss", "mae", "time"]
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] in (["train"], ["valid"])]
    assert [r[:2] for r in rows[-4:]] == [["0", "train"], ["0", "valid"], ["1", "train"], ["1", "valid"]]


def test_progress_without_metrics_and_over_an_iterator_without_length(capsys):
    class Stream:
        train = property(lambda self: iter(uneven_batches([4, 4])))
        valid = []
    Learner(nn.Linear(3, 1), Stream(), F.mse_loss, cbs=ProgressCB()).fit(1)
    assert "train" in capsys.readouterr().out


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


# ---- minilearn.metrics: the ready metrics, against formulas written out item by item -------------

from minilearn.metrics import accuracy, error_rate, mae, mse, top_k_accuracy  # noqa: E402


def scores_and_classes(n=37, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, classes, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def test_the_classification_metrics_equal_counts_made_item_by_item():
    preds, target = scores_and_classes()
    rows, ys = preds.tolist(), target.tolist()
    best = [max(range(len(r)), key=r.__getitem__) for r in rows]
    hits = sum(b == y for b, y in zip(best, ys))
    assert accuracy(preds, target).item() == pytest.approx(hits / len(ys))
    assert error_rate(preds, target).item() == pytest.approx(1 - hits / len(ys))
    for k in (1, 2, 3):
        in_top = sum(sum(v > r[y] for v in r) < k for r, y in zip(rows, ys))  # fewer than k scores beat the target
        assert top_k_accuracy(k)(preds, target).item() == pytest.approx(in_top / len(ys))
    assert top_k_accuracy(1)(preds, target).item() == accuracy(preds, target).item()


def test_accuracy_over_positions_counts_every_position():
    preds, target = scores_and_classes(n=24)
    expected = accuracy(preds, target)
    assert accuracy(preds.view(4, 6, 5), target.view(4, 6)).item() == pytest.approx(expected.item())


def test_the_regression_metrics_equal_sums_made_item_by_item():
    g = torch.Generator().manual_seed(1)
    preds, target = torch.randn(23, generator=g, dtype=torch.float64), torch.randn(23, generator=g, dtype=torch.float64)
    diffs = [p - t for p, t in zip(preds.tolist(), target.tolist())]
    assert mae(preds, target).item() == pytest.approx(sum(abs(d) for d in diffs) / 23)
    assert mse(preds, target).item() == pytest.approx(sum(d * d for d in diffs) / 23)
    # a one-output regression head against (N,) targets: compared item by item, not broadcast to (N, N)
    assert mae(preds[:, None], target).item() == pytest.approx(mae(preds, target).item())


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=6))
def test_a_pass_of_uneven_batches_gives_the_metric_over_the_whole_pass(sizes):
    g = torch.Generator().manual_seed(len(sizes))
    x, y = torch.randn(sum(sizes), 3, generator=g), torch.randint(0, 4, (sum(sizes),), generator=g)
    batches = [(x[i], y[i]) for i in torch.split(torch.arange(sum(sizes)), sizes)]
    model = nn.Linear(3, 4)
    metrics = MetricsCB(accuracy=accuracy, error_rate=error_rate, top2=top_k_accuracy(2))
    Learner(model, DataLoaders([], batches), F.cross_entropy, cbs=metrics).fit(1, train=False)
    with torch.no_grad():
        whole = model(x)
    row = metrics.history[0]
    assert row["accuracy"] == pytest.approx(accuracy(whole, y).item(), abs=1e-6)
    assert row["error_rate"] == pytest.approx(error_rate(whole, y).item(), abs=1e-6)
    assert row["top2"] == pytest.approx(top_k_accuracy(2)(whole, y).item(), abs=1e-6)


def test_a_regression_pass_of_uneven_batches_gives_mae_and_mse_over_the_whole_pass():
    batches = uneven_batches([5, 2, 7])
    model = nn.Linear(3, 1)
    metrics = MetricsCB(mae=mae, mse=mse)
    Learner(model, DataLoaders([], batches), F.mse_loss, cbs=metrics).fit(1, train=False)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        out = model(x)
    assert metrics.history[0]["mae"] == pytest.approx(mae(out, y).item(), rel=1e-6)
    assert metrics.history[0]["mse"] == pytest.approx(metrics.history[0]["loss"], rel=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: accuracy(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long)),
     r"accuracy needs scores of shape \(\*target.shape, classes\).*got preds \(4, 3\) and target \(5,\)"),
    (lambda: error_rate(torch.zeros(4, 3), torch.zeros(4, 3)),
     r"error_rate needs scores.*got preds \(4, 3\) and target \(4, 3\)"),
    (lambda: accuracy(torch.zeros(4, 3), torch.zeros(4)), r"target should hold integers, got torch.float32"),
    (lambda: top_k_accuracy(5)(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)),
     r"top_k_accuracy\(5\) needs at least 5 classes, preds has 3"),
    (lambda: top_k_accuracy(0), r"top_k_accuracy\(k\) needs a whole number k >= 1, got k=0"),
    (lambda: mae(torch.zeros(4, 2), torch.zeros(4)),
     r"mae needs preds and target of the same shape.*got preds \(4, 2\) and target \(4,\)"),
    (lambda: mse(torch.zeros(4), torch.zeros(5)), r"mse needs preds and target of the same shape"),
])
def test_inputs_of_the_wrong_shape_or_kind_are_refused_naming_them(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_top_k_accuracy_passed_without_k_is_refused_and_the_learner_stays_usable():
    batches = [(torch.randn(4, 3), torch.randint(0, 4, (4,)))]
    learn = Learner(nn.Linear(3, 4), DataLoaders([], batches), F.cross_entropy)
    with pytest.raises(TypeError, match=r"pass top_k_accuracy\(5\), not top_k_accuracy itself \(it was called with a tensor of shape \(4, 4\) for k\)"):
        learn.fit(1, train=False, cbs=MetricsCB(top5=top_k_accuracy))
    good = MetricsCB(top5=top_k_accuracy(2))
    learn.fit(1, train=False, cbs=good)
    assert 0 <= good.history[0]["top5"] <= 1
