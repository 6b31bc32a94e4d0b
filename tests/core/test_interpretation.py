"""ClassificationInterpretation: the confusion matrix and the most confused pairs against counts made
by hand, the items and losses of a learner's validation set in order, the plots, and refusals."""

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import ClassificationInterpretation, DataLoaders, Learner
from minilearn.predictions import get_preds_with_inputs

matplotlib.use("Agg")


def made_up(n=40, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    preds, targets = torch.randn(n, classes, generator=g), torch.randint(0, classes, (n,), generator=g)
    return ClassificationInterpretation(torch.rand(n, 8, 8, generator=g), preds, targets,
                                        F.cross_entropy(preds, targets, reduction="none"), vocab=["a", "b", "c"])


def test_the_confusion_matrix_and_the_most_confused_pairs_are_counts_made_item_by_item():
    interp = made_up()
    counts = [[0] * 3 for _ in range(3)]
    for row, t in zip(interp.preds.tolist(), interp.targets.tolist()):
        counts[t][max(range(3), key=row.__getitem__)] += 1
    assert interp.confusion_matrix().tolist() == counts
    off = sorted(((counts[a][p], a, p) for a in range(3) for p in range(3) if a != p and counts[a][p] >= 3), reverse=True)
    confused = interp.most_confused(min_count=3)
    assert [c for _, _, c in confused] == [c for c, _, _ in off]
    assert {(a, p, c) for a, p, c in confused} == {("abc"[a], "abc"[p], c) for c, a, p in off}


def test_the_confusion_matrix_plot_shows_the_counts_or_each_row_s_shares():
    interp = made_up()
    ax = interp.plot_confusion_matrix().axes[0]
    assert [t.get_text() for t in ax.texts] == [str(v) for v in interp.confusion_matrix().flatten().tolist()]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"] and ax.get_ylabel() == "actual"
    shares = torch.tensor([float(t.get_text()) for t in interp.plot_confusion_matrix(normalize=True).axes[0].texts])
    torch.testing.assert_close(shares.view(3, 3).sum(1), torch.ones(3), atol=0.011, rtol=0)


def test_plot_top_losses_shows_the_worst_items_with_prediction_actual_loss_and_probability():
    interp = made_up()
    worst = interp.losses.argsort(descending=True)[:4]
    seen = []
    interp.plot_top_losses(4, show=lambda xs, captions: seen.append((xs, captions)))
    xs, captions = seen[0]
    assert torch.equal(xs, interp.inputs[worst])
    i = worst[0]
    prob = interp.preds[i].softmax(-1).max().item()
    assert captions[0] == f"{'abc'[interp.preds[i].argmax()]}/{'abc'[interp.targets[i]]}\n{interp.losses[i]:.2f} / {prob:.2f}"
    fig = interp.plot_top_losses(4)  # the default draws the 8x8 inputs as images
    assert [ax.get_title() for ax in fig.axes if ax.images] == captions


def test_from_learner_holds_the_validation_items_in_order_with_the_model_s_scores_and_losses():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(26, 4, generator=g), torch.randint(0, 3, (26,), generator=g)
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=7))
    learn = Learner(nn.Linear(4, 3), dls, F.cross_entropy)
    learn.fit(1)
    interp = ClassificationInterpretation.from_learner(learn)
    with torch.no_grad():
        logits = learn.model(x)
    assert torch.equal(interp.inputs, x) and torch.equal(interp.targets, y) and interp.vocab == ["0", "1", "2"]
    torch.testing.assert_close(interp.preds, logits)
    torch.testing.assert_close(interp.losses, F.cross_entropy(logits, y, reduction="none"))
    table = interp.plot_top_losses(3).axes[0].tables[0].get_celld()  # (N, F) inputs: a table
    assert table[1, 0].get_text().get_text() == f"{x[interp.losses.argmax(), 0].item():.3g}"


def test_get_preds_with_inputs_keeps_each_batch_s_model_inputs():
    x1, x2, y = torch.randn(9, 2), torch.randn(9, 3), torch.randn(9, 1)
    batches = [(x1[i:i + 4], x2[i:i + 4], y[i:i + 4]) for i in range(0, 9, 4)]

    class Two(nn.Module):
        def forward(self, a, b): return a.sum(-1, keepdim=True) + b.sum(-1, keepdim=True)

    learn = Learner(Two(), DataLoaders([], batches), F.mse_loss, n_inp=2)
    (a, b), (preds, targets, losses) = get_preds_with_inputs(learn)
    assert torch.equal(a, x1) and torch.equal(b, x2) and torch.equal(targets, y) and losses.shape == (9,)


@pytest.mark.parametrize("preds, targets, vocab, message", [
    (torch.zeros(4, 2, 3), torch.zeros(4, dtype=torch.long), None, r"class scores of shape \(N, classes\); got \(4, 2, 3\)"),
    (torch.zeros(4, 3), torch.zeros(4), None, r"one integer class id an item, targets of shape \(4,\); got \(4,\) torch.float32"),
    (torch.zeros(4, 3), torch.zeros(5, dtype=torch.long), None, r"targets of shape \(4,\); got \(5,\) torch.int64"),
    (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), ["a", "b"], "vocab names 2 classes but preds scores 3"),
])
def test_what_is_not_a_classifier_s_output_is_refused_naming_the_shapes(preds, targets, vocab, message):
    with pytest.raises(ValueError, match=message):
        ClassificationInterpretation(torch.zeros(len(preds), 2), preds, targets, torch.zeros(len(preds)), vocab)


def test_a_regression_learner_is_refused_and_stays_usable():
    batches = [(torch.randn(4, 3), torch.randn(4, 1))]
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches, batches), F.mse_loss)
    with pytest.raises(ValueError, match=r"one integer class id an item, targets of shape \(4,\); got \(4, 1\) torch.float32"):
        ClassificationInterpretation.from_learner(learn)
    learn.fit(1)
    assert learn.get_preds().preds.shape == (4, 1)
