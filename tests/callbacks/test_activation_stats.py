"""ActivationStatsCB and Hooks: the statistics equal a hand computation on a small network, only
training batches count, and the hooks are gone after the fit and after an exception."""

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilearn import Callback, DataLoaders, Hooks, Learner
from minilearn.callbacks import ActivationStatsCB


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))


def batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(5, 3, generator=g) * 4, torch.randn(5, 1, generator=g)) for _ in range(n)]


def no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


def test_the_statistics_are_those_of_each_layer_s_outputs_on_each_training_batch():
    model, train = net(), batches(3, 0)
    stats = ActivationStatsCB(bins=20, hist_max=5.0)
    learn = Learner(model, DataLoaders(train, batches(2, 1)), F.mse_loss, lr=0.0)  # lr 0: the layers stay put
    learn.fit(1, cbs=stats)
    means, stds, hists = [], [], []
    with torch.no_grad():
        for x, _ in train:
            outs, h = [], x
            for layer in model:
                h = layer(h)
                outs.append(h)
            means.append([o.mean() for o in outs])
            stds.append([o.std() for o in outs])
            hists.append([torch.histc(o.abs(), 20, 0, 5.0) for o in outs])
    torch.testing.assert_close(stats.means, torch.tensor(means).T, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(stats.stds, torch.tensor(stds).T, rtol=1e-6, atol=1e-7)
    assert torch.equal(stats.hists, torch.stack([torch.stack(h) for h in hists]).transpose(0, 1))
    assert stats.hists.shape == (3, 3, 20)  # modules, training batches (not the 2 validation ones), bins
    relu_dead = (torch.cat([model[:2](x) for x, _ in train]) == 0)
    assert stats.dead_fraction()[1].mean().item() == pytest.approx(relu_dead.float().mean().item(), abs=0.05)
    assert no_hooks(model)


def test_chosen_modules_and_the_plots(monkeypatch):
    matplotlib.use("Agg")
    model = net()
    stats = ActivationStatsCB(modules=[model[1]])
    Learner(model, DataLoaders(batches(4, 0), []), F.mse_loss).fit(1, cbs=stats)
    assert stats.means.shape == (1, 4)
    for plot in (stats.plot_stats, stats.color_dim, stats.dead_chart):
        assert plot().axes


def test_the_hooks_are_removed_when_the_fit_raises():
    class Boom(Callback):
        def after_loss(self, learn):
            raise RuntimeError("boom")

    model = net()
    learn = Learner(model, DataLoaders(batches(2, 0), []), F.mse_loss)
    with pytest.raises(RuntimeError):
        learn.fit(1, cbs=[ActivationStatsCB(), Boom()])
    assert no_hooks(model)
    learn.fit(1)


def test_hooks_are_removed_when_the_with_block_raises():
    model, seen = net(), []
    with pytest.raises(ValueError):
        with Hooks(model, lambda i, m, inp, out: seen.append(i)):
            model(torch.zeros(1, 3))
            raise ValueError
    assert seen == [0, 1, 2] and no_hooks(model)


def test_a_model_without_children_needs_modules():
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches(1, 0), []), F.mse_loss)
    with pytest.raises(ValueError, match=r"Linear has no children; pass ActivationStatsCB\(modules=\[...\]\)"):
        learn.fit(1, cbs=ActivationStatsCB())
    learn.fit(1, cbs=ActivationStatsCB(modules=[learn.model]))


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_a_suptitle_and_the_legends_cover_no_title_and_no_plotted_line():
    matplotlib.use("Agg")
    model = net()
    stats = ActivationStatsCB()
    Learner(model, DataLoaders(batches(4, 0), []), F.mse_loss).fit(1, cbs=stats)
    for plot in (stats.plot_stats, stats.color_dim, stats.dead_chart):
        fig = plot()
        suptitle = fig.suptitle("a title above the plots")
        renderer = fig.canvas.get_renderer()
        fig.draw(renderer)  # the constrained layout places everything at draw time
        top = suptitle.get_window_extent(renderer)
        for ax in fig.axes:
            assert not overlaps(top, ax.title.get_window_extent(renderer)), plot.__name__
            assert not overlaps(top, ax.get_window_extent(renderer)), plot.__name__
            for legend in fig.legends:
                assert not overlaps(legend.get_window_extent(renderer), ax.get_window_extent(renderer)), plot.__name__
    dead = stats.dead_chart().axes[0]
    low, high = dead.get_ylim()
    assert low < 0 and high > 1  # a line at 0 or at 1 is drawn inside the frame
