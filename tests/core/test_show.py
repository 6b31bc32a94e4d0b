"""minilearn.show and Learner.show_batch: images as a grid and feature rows as a table, each item with
its caption, a user's own `show`, and clear refusals of what the defaults cannot draw."""

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilearn import DataLoaders, Learner
from minilearn.show import caption, show_images, show_items, show_table

matplotlib.use("Agg")


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


@pytest.mark.parametrize("shape", [(5, 8, 8), (5, 1, 8, 8), (5, 3, 8, 8)])
def test_images_are_drawn_one_an_axes_with_their_captions(shape):
    xs = torch.rand(*shape)
    fig = show_images(xs, [f"item {i}" for i in range(5)], ncols=3)
    axes = image_axes(fig)
    assert [ax.get_title() for ax in axes] == [f"item {i}" for i in range(5)]
    drawn = axes[2].images[0].get_array()
    expected = xs[2, 0] if shape[1:2] == (1,) else xs[2].permute(1, 2, 0) if len(shape) == 4 else xs[2]
    assert drawn.shape == tuple(expected.shape) and torch.allclose(torch.as_tensor(drawn.data), expected)


def test_a_table_shows_each_row_s_first_features_and_its_caption():
    xs = torch.tensor([[1.0, 2.5, 3.0], [4.0, 5.0, 6.25]])
    table = show_table(xs, ["a", "b"], max_columns=2).axes[0].tables[0]
    cells = table.get_celld()
    text = [[cells[r, c].get_text().get_text() for c in range(4)] for r in range(3)]
    assert text == [["x0", "x1", "...", ""], ["1", "2.5", "...", "a"], ["4", "5", "...", "b"]]


@pytest.mark.parametrize("xs, got", [(torch.zeros(2, 3, 4, 5, 6), r"a tensor of shape \(2, 3, 4, 5, 6\)"),
                                     (torch.zeros(2, 5, 8, 8), r"a tensor of shape \(2, 5, 8, 8\)"),
                                     ({"input_ids": torch.zeros(2, 3)}, "a dict")])
def test_what_the_defaults_cannot_draw_is_refused_naming_it(xs, got):
    with pytest.raises(ValueError, match=rf"no default picture for inputs that are {got}.*pass show="):
        show_items(xs, ["", ""])


def test_captions_name_classes_from_the_vocab_and_write_numbers_shortly():
    assert caption(torch.tensor(2), ["cat", "dog", "bird"]) == "bird"
    assert caption(torch.tensor(2)) == "2"
    assert caption(torch.tensor(0.123456)) == "0.123"
    assert caption(torch.tensor([1, 2])) == "[1, 2]"


def digits_learner(bs=6):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 8, 8, generator=g), torch.randint(0, 3, (20,), generator=g)
    batches = [(x[i:i + bs], y[i:i + bs]) for i in range(0, 20, bs)]
    return Learner(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), DataLoaders(batches, batches), F.cross_entropy), x, y


def test_show_batch_draws_the_first_items_of_a_training_batch_with_their_targets():
    learn, x, y = digits_learner()
    fig = learn.show_batch(n=4, vocab=["zero", "one", "two"])
    axes = image_axes(fig)
    assert [ax.get_title() for ax in axes] == [["zero", "one", "two"][c] for c in y[:4].tolist()]
    assert torch.equal(torch.as_tensor(axes[3].images[0].get_array().data), x[3])
    assert len(image_axes(learn.show_batch(n=50))) == 6  # no more than the batch holds


def test_show_batch_draws_feature_rows_as_a_table():
    batches = [(torch.randn(4, 3), torch.randn(4))]
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches, []), F.mse_loss)
    cells = learn.show_batch().axes[0].tables[0].get_celld()
    assert cells[1, 3].get_text().get_text() == f"{batches[0][1][0].item():.3g}"


def test_show_batch_hands_a_user_s_show_the_inputs_and_captions_on_the_cpu():
    learn, x, y = digits_learner()
    seen = []
    out = learn.show_batch(n=3, show=lambda xs, captions: seen.append((xs, captions)) or "drawn")
    assert out == "drawn" and torch.equal(seen[0][0], x[:3]) and seen[0][1] == [str(c) for c in y[:3].tolist()]


def test_show_batch_of_mapping_batches_needs_a_show_of_its_own_and_the_learner_stays_usable():
    batches = [{"x": torch.randn(4, 3), "target": torch.randn(4, 1)}]
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches, []), F.mse_loss)
    with pytest.raises(ValueError, match="no default picture for inputs that are a dict"):
        learn.show_batch()
    assert learn.show_batch(n=2, show=lambda xs, captions: list(xs)) == ["x", "target"]


def test_show_batch_of_an_empty_loader_says_so():
    learn, _, _ = digits_learner()
    with pytest.raises(ValueError, match="show_batch was given a loader without batches"):
        learn.show_batch(dl=[])
