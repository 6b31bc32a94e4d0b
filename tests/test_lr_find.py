"""lr_find: the exponential schedule, the suggestion, and a bit-for-bit restore."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hypothesis import given, settings
from hypothesis import strategies as st

from minilearn import LRFinderCB
from minilearn.lr_finder import SUGGESTIONS, valley

from conftest import regression_dls


def state(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


def test_lr_find_restores_model_and_optimizer_bit_for_bit(make_learner):
    learn = make_learner(dls=regression_dls(n_train=400, bs=8), lr=0.01,
                         opt_func=lambda p, lr: torch.optim.AdamW(p, lr=lr))
    learn.fit(1)
    before = state(learn)
    opt_before = learn.opt.state_dict()
    opt_before = {"state": {k: {n: t.clone() for n, t in v.items()} for k, v in opt_before["state"].items()},
                  "lr": [g["lr"] for g in opt_before["param_groups"]]}
    suggestion = learn.lr_find(num_it=60, show_plot=False)
    assert 1e-7 <= suggestion <= 10
    after = state(learn)
    assert all(torch.equal(before[k], after[k]) for k in before)
    sd = learn.opt.state_dict()
    assert [g["lr"] for g in sd["param_groups"]] == opt_before["lr"]
    for k, v in opt_before["state"].items():
        assert all(torch.equal(t, sd["state"][k][n]) for n, t in v.items())


def test_lr_find_on_a_new_learner_leaves_no_optimizer_behind(make_learner):
    learn = make_learner(dls=regression_dls(n_train=400, bs=8))
    learn.lr_find(num_it=20, show_plot=False)
    assert learn.opt is None and len(learn.cbs) == 1


def test_schedule_is_exponential_and_stops_when_the_loss_blows_up(make_learner):
    learn = make_learner(dls=regression_dls(n_train=800, bs=8))
    finder = LRFinderCB(1e-4, 1e4, num_it=80)
    learn.fit(1, cbs=finder, valid=False)
    n = len(finder.lrs)
    assert finder.lrs[0] == pytest.approx(1e-4)
    ratios = [b / a for a, b in zip(finder.lrs, finder.lrs[1:])]
    assert all(r == pytest.approx(10 ** (8 / 79)) for r in ratios)
    assert n < 80  # SGD at lr 1e4 on a regression diverges long before the end
    assert not math.isfinite(finder.losses[-1]) or finder.losses[-1] > 4 * min(finder.losses)


def test_steep_is_where_the_smoothed_loss_falls_fastest():
    finder = LRFinderCB(1e-3, 1.0, num_it=7)
    finder.lrs = [1e-3 * 10 ** (i / 2) for i in range(7)]
    finder.losses = [5.0, 5.0, 4.9, 3.0, 2.9, 2.8, 9.0]
    sm = finder.smoothed_losses()
    slopes = [(sm[i + 1] - sm[i - 1]) for i in range(1, 5)]  # equal log-lr steps: the plain differences
    assert finder.suggestion("steep") == finder.lrs[1 + slopes.index(min(slopes))]
    assert finder.plot("steep").get_xscale() == "log"


def test_minimum_is_a_tenth_of_the_lr_of_the_lowest_smoothed_loss():
    finder = LRFinderCB(1e-3, 1.0, num_it=7)
    finder.lrs = [1e-3 * 10 ** (i / 2) for i in range(7)]
    finder.losses = [5.0, 4.0, 3.0, 2.0, 1.0, 3.0, 9.0]
    sm = finder.smoothed_losses()
    assert finder.suggestion("minimum") == pytest.approx(finder.lrs[sm.index(min(sm))] / 10)


def decreasing_runs(losses):
    """Every strictly decreasing subsequence (as index tuples), by brute force."""
    return [c for size in range(1, len(losses) + 1) for c in itertools.combinations(range(len(losses)), size)
            if all(losses[a] > losses[b] for a, b in zip(c, c[1:]))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=9))
def test_valley_is_halfway_along_a_longest_decreasing_run(losses):
    lrs = [10.0 ** i for i in range(len(losses))]
    runs = decreasing_runs(losses)
    longest = max(len(c) for c in runs)
    halfway = {c[0] + (c[-1] - c[0]) // 2 for c in runs if len(c) == longest}
    assert lrs.index(valley(lrs, [float(v) for v in losses])) in halfway


def test_the_plot_marks_the_chosen_lr_and_an_unknown_method_names_the_methods(make_learner):
    finder = LRFinderCB(1e-3, 1.0, num_it=7)
    finder.lrs = [1e-3 * 10 ** (i / 2) for i in range(7)]
    finder.losses = [5.0, 4.0, 3.0, 2.0, 1.0, 3.0, 9.0]
    for method in SUGGESTIONS:
        ax = finder.plot(method)
        assert ax.lines[-1].get_xdata()[0] == finder.suggestion(method)
        assert ax.get_legend().get_texts()[0].get_text().startswith(method)
    with pytest.raises(ValueError, match=r"unknown lr_find method 'slide': choose one of \['minimum', 'steep', 'valley'\]"):
        finder.suggestion("slide")
    learn = make_learner()
    with pytest.raises(ValueError, match="unknown lr_find method"):
        learn.lr_find(num_it=10, show_plot=False, method="slide")
    assert learn.opt is None  # refused before it ran


def test_lr_find_returns_the_lr_of_the_method_it_is_given(make_learner):
    lrs = {}
    for method in SUGGESTIONS:
        torch.manual_seed(0)
        learn = make_learner()
        lrs[method] = learn.lr_find(num_it=60, show_plot=False, method=method)
    finder_lrs = [1e-7 * (10.0 / 1e-7) ** (i / 59) for i in range(60)]
    assert all(any(lr == pytest.approx(f) or lr == pytest.approx(f / 10) for f in finder_lrs) for lr in lrs.values())
    assert len(set(lrs.values())) > 1


@pytest.mark.parametrize("kwargs, match", [({"start_lr": 1, "end_lr": 0.1}, "start_lr < end_lr"),
                                           ({"num_it": 1}, "num_it must be at least 2")])
def test_bad_finder_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRFinderCB(**kwargs)


def test_too_few_losses_to_suggest():
    finder = LRFinderCB()
    finder.lrs, finder.losses = [1e-7, 1e-6], [1.0, 1.0]
    with pytest.raises(ValueError, match="at least 3"):
        finder.suggestion()
