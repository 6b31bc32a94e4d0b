"""lr_find: the exponential schedule, a bit-for-bit restore, fastai's four rules (against fastai's
own code, in float64 and in float32 as its lr_find runs them), and a plot only
where it can be seen."""

import math

import matplotlib
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from hypothesis import given, settings
from hypothesis import strategies as st

from minilearn import Callback, DataLoaders, Learner, LRFinderCB, Order
from minilearn import lr_finder
from minilearn.lr_finder import SuggestedLRs

from conftest import regression_dls


def state(learn):
    return {k: v.clone() for k, v in learn.model.state_dict().items()}


# ---- the reference: fastai's own rules (fastai.callback.schedule), installed without its
# dependencies by .ci/run: `pip install --no-deps fastai fasttransform "plum-dispatch<2.10" beartype
# fastdownload` (its full install would replace torch) ----

def fastai_rule(name):
    """fastai's rule `name` as `rule(lrs, losses) -> lr`, run in float64."""
    schedule = pytest.importorskip("fastai.callback.schedule",
                                   reason="fastai is the reference: pip install --no-deps fastai fasttransform "
                                          "'plum-dispatch<2.10' beartype fastdownload")
    def rule(lrs, losses):
        lrs, losses = torch.tensor(lrs, dtype=torch.float64), torch.tensor(losses, dtype=torch.float64)
        return float(getattr(schedule, name)(lrs, losses, len(lrs))[0])
    return rule


def fastai_lr_find_curve(finder):
    """What fastai's lr_find hands its rules: the smoothed losses without the first num_it // 10 and
    the last 5 points, cut at the first NaN."""
    lrs, losses = finder.lrs[finder.num_it // 10:-5], finder.smoothed_losses()[finder.num_it // 10:-5]
    nans = [i for i, loss in enumerate(losses) if math.isnan(loss)]
    return (lrs[:nans[0]], losses[:nans[0]]) if nans else (lrs, losses)


def digits_learner(seed):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16, torch.tensor(y)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 10))
    dls = DataLoaders.from_dsets(TensorDataset(x, y), TensorDataset(x[:64], y[:64]), bs=64)
    return Learner(model, dls, F.cross_entropy, lr=1e-3, opt_func=torch.optim.AdamW)


def spirals_learner(seed, n_per_class=400):
    torch.manual_seed(seed)
    xs, ys = [], []
    for c in range(3):  # nbs/00_quickstart.ipynb's spirals and model
        r = torch.linspace(0.05, 1, n_per_class)
        t = torch.linspace(0, 4, n_per_class) + c * 2 * math.pi / 3 + 0.2 * torch.randn(n_per_class)
        xs.append(torch.stack([r * torch.sin(t), r * torch.cos(t)], dim=1))
        ys.append(torch.full((n_per_class,), c))
    x, y = torch.cat(xs), torch.cat(ys)
    model = nn.Sequential(nn.Linear(2, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 3))
    dls = DataLoaders.from_dsets(TensorDataset(x, y), TensorDataset(x[:64], y[:64]), bs=64)
    return Learner(model, dls, F.cross_entropy, lr=1e-3, opt_func=torch.optim.AdamW)


@pytest.fixture(scope="module")
def recorded_finders():
    """lr_find's curves on digits and on the quickstart's spirals, two seeds each."""
    finders = []
    for make in (digits_learner, spirals_learner):
        for seed in (0, 1):
            learn, finder = make(seed), LRFinderCB()
            learn.fit(math.ceil(finder.num_it / len(learn.dls.train)), cbs=finder, valid=False)
            finders.append(finder)
    return finders


def test_the_rules_give_fastais_numbers_on_recorded_curves(recorded_finders):
    for finder in recorded_finders:
        lrs, losses = fastai_lr_find_curve(finder)
        assert finder.curve() == (lrs, losses)
        expected = SuggestedLRs(**{name: fastai_rule(name)(lrs, losses) for name in SuggestedLRs._fields})
        assert finder.suggestions() == pytest.approx(expected, rel=1e-12)
        assert len(set(expected)) == 4  # the four rules differ here, so a mixed-up field would show


def test_the_rules_agree_with_fastai_itself(recorded_finders):
    fastai = pytest.importorskip("fastai.callback.schedule")  # pip install --no-deps fastai (see the bench)
    for finder in recorded_finders:
        lrs, losses = (torch.tensor(v) for v in finder.curve())  # float32, as fastai's lr_find has them
        theirs = SuggestedLRs(**{name: getattr(fastai, name)(lrs, losses, finder.num_it)[0] for name in SuggestedLRs._fields})
        assert finder.suggestions() == pytest.approx(theirs, rel=1e-6)


curves = st.lists(st.floats(0.0, 10.0), min_size=17, max_size=40)


@settings(max_examples=300, deadline=None)
@given(curves)
def test_each_rule_matches_fastais_on_any_curve(losses):
    lrs = [1e-5 * 10 ** (i / 8) for i in range(len(losses))]
    for name in SuggestedLRs._fields:
        rule = fastai_rule(name)
        if name == "valley" and rule(lrs, losses) == pytest.approx(lrs[-1]) and len(losses) > 2:
            continue  # fastai wraps a valley of two points round to the last lr; minilearn takes the first
        assert getattr(lr_finder, name)(lrs, losses) == pytest.approx(rule(lrs, losses), rel=1e-12), name


def test_a_two_point_valley_gives_the_first_lr_where_fastai_wraps_round_to_the_last():
    lrs = [1.0, 10.0, 100.0, 1000.0]
    assert fastai_rule("valley")(lrs, [5.0, 4.0, 4.0, 4.0]) == 1000.0
    assert lr_finder.valley(lrs, [5.0, 4.0, 4.0, 4.0]) == 1.0


def test_slide_on_a_curve_shorter_than_its_window_starts_at_the_first_point():
    # fastai raises an IndexError; here the window is the whole curve.
    assert lr_finder.slide([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == 1.0
    assert lr_finder.slide([1.0, 2.0, 3.0], [1.0, 1.0, 5.0]) == 1.0


def test_suggested_lrs_prints_every_rule_and_steep_comes_first():
    lrs = SuggestedLRs(steep=0.0182, valley=1.2e-4, slide=3e-3, minimum=0.03)
    assert repr(lrs) == "SuggestedLRs(steep=1.82e-02, valley=1.20e-04, slide=3.00e-03, minimum=3.00e-02)"
    assert lrs[0] == lrs.steep and lrs._fields == ("steep", "valley", "slide", "minimum")


def test_lr_find_restores_model_and_optimizer_bit_for_bit(make_learner):
    learn = make_learner(dls=regression_dls(n_train=400, bs=8), lr=0.01,
                         opt_func=lambda p, lr: torch.optim.AdamW(p, lr=lr))
    learn.fit(1)
    before = state(learn)
    opt_before = learn.opt.state_dict()
    opt_before = {"state": {k: {n: t.clone() for n, t in v.items()} for k, v in opt_before["state"].items()},
                  "lr": [g["lr"] for g in opt_before["param_groups"]]}
    suggestions = learn.lr_find(num_it=60, show_plot=False)
    assert isinstance(suggestions, SuggestedLRs) and all(1e-8 <= lr <= 10 for lr in suggestions)
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


class WatchTrial(Callback):
    order = Order.PROGRESS  # after LRFinderCB, as ProgressCB is

    def __init__(self): self.seen = []
    def before_fit(self, learn): self.seen.append(learn.trial_fit)
    def after_batch(self, learn): self.seen.append(learn.trial_fit)


def test_the_fit_is_marked_a_trial_while_it_runs(make_learner):
    watch = WatchTrial()
    learn = make_learner(dls=regression_dls(n_train=400, bs=8))
    learn.fit(1, cbs=[LRFinderCB(num_it=5), watch], valid=False)
    assert watch.seen == [True] * 5 and learn.trial_fit is False  # the 5th batch stops at after_loss
    learn.fit(1, cbs=watch)
    assert len(watch.seen) > 6 and not any(watch.seen[5:])


def test_schedule_is_exponential_and_stops_when_the_smoothed_loss_blows_up(make_learner):
    learn = make_learner(dls=regression_dls(n_train=800, bs=8))
    finder = LRFinderCB(1e-4, 1e4, num_it=80)
    learn.fit(1, cbs=finder, valid=False)
    n = len(finder.lrs)
    assert finder.lrs[0] == pytest.approx(1e-4)
    ratios = [b / a for a, b in zip(finder.lrs, finder.lrs[1:])]
    assert all(r == pytest.approx(10 ** (8 / 79)) for r in ratios)
    assert n < 80  # SGD at lr 1e4 on a regression diverges long before the end
    smoothed = finder.smoothed_losses()
    assert not math.isfinite(smoothed[-1]) or smoothed[-1] > 4 * min(smoothed[:-1])
    assert all(s <= 4 * min(smoothed[:i + 1]) for i, s in enumerate(smoothed[:-1]))  # it did not stop earlier


def test_smoothing_is_a_bias_corrected_moving_average():
    finder = LRFinderCB()
    finder.losses = [2.0, 4.0, 1.0]
    avg, expected = 0.0, []
    for i, loss in enumerate(finder.losses, 1):
        avg = 0.98 * avg + 0.02 * loss
        expected.append(avg / (1 - 0.98**i))
    assert finder.smoothed_losses() == pytest.approx(expected) and expected[0] == pytest.approx(2.0)


def made_up_finder(n=40):
    finder = LRFinderCB(1e-5, 1.0, num_it=n)
    finder.lrs = [1e-5 * 10 ** (5 * i / (n - 1)) for i in range(n)]
    finder.losses = [2.0 - 1.5 / (1 + math.exp(-(i - 20) / 3)) + (0.2 * (i - 32) ** 2 if i > 32 else 0) for i in range(n)]
    return finder


def test_the_plot_marks_every_suggestion():
    finder = made_up_finder()
    ax = finder.plot()
    assert ax.get_xscale() == "log"
    dots = {line.get_label(): line.get_xdata()[0] for line in ax.lines[1:]}
    assert dots == {f"{name}: {lr:.2e}": lr for name, lr in finder.suggestions()._asdict().items()}
    assert len(ax.lines[0].get_xdata()) == len(finder.losses) - 5  # fastai's view: without the blow-up


def test_show_plot_in_a_notebook_leaves_the_figure_to_the_notebook(monkeypatch, tmp_path, capsys):
    import matplotlib.pyplot as plt
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lr_finder, "in_notebook", lambda: True)
    plt.close("all")
    made_up_finder().show_plot()
    assert plt.get_fignums() and not list(tmp_path.iterdir()) and capsys.readouterr().out == ""


def test_show_plot_under_an_interactive_backend_shows_a_window(monkeypatch, tmp_path, capsys):
    import matplotlib.pyplot as plt
    shown = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lr_finder, "in_notebook", lambda: False)
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "TkAgg")
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    made_up_finder().show_plot()
    assert shown == [True] and not list(tmp_path.iterdir()) and capsys.readouterr().out == ""


def test_lr_find_in_a_script_saves_the_plot_and_says_where(monkeypatch, tmp_path, capsys, make_learner):
    import matplotlib.pyplot as plt
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lr_finder, "in_notebook", lambda: False)
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "agg")
    plt.close("all")
    learn = make_learner(dls=regression_dls(n_train=400, bs=8))
    learn.lr_find(num_it=40)
    out = capsys.readouterr().out
    assert out == ("lr_find: matplotlib's 'agg' backend has no window, so the plot was saved to lr_find.png "
                   "(show_plot=False skips it)\n")
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums()  # the figure is closed, not left to pile up


def test_lr_find_shows_no_plot_on_other_processes(monkeypatch, tmp_path, capsys, make_learner):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lr_finder, "in_notebook", lambda: False)
    learn = make_learner(dls=regression_dls(n_train=400, bs=8))
    learn.is_main_process = False
    learn.lr_find(num_it=40)
    assert not list(tmp_path.iterdir()) and capsys.readouterr().out == ""


@pytest.mark.parametrize("kwargs, match", [({"start_lr": 1, "end_lr": 0.1}, "start_lr < end_lr"),
                                           ({"num_it": 1}, "num_it must be at least 2")])
def test_bad_finder_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LRFinderCB(**kwargs)


def test_too_few_losses_to_suggest_says_why_and_the_learner_stays_usable(make_learner):
    learn = make_learner(dls=regression_dls(n_train=40, bs=8))
    with pytest.raises(ValueError, match=r"lr_find recorded 7 losses, 2 once the first num_it // 10 = 0 and the "
                                         r"last 5 are left out; it needs at least 3 .*raise num_it"):
        learn.lr_find(num_it=7, show_plot=False)
    assert learn.opt is None and learn.trial_fit is False and len(learn.cbs) == 1
    learn.fit(1)
