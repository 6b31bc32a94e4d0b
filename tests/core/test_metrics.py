"""minilearn.metrics: the ready metrics, against formulas written out item by item."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from minilearn import DataLoaders, Learner
from minilearn.metrics import accuracy, error_rate, mae, mse, top_k_accuracy
from minilearn.callbacks import MetricsCB
from conftest import uneven_batches


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
