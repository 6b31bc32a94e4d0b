"""OneCycleCB and BatchSchedCB against PyTorch's schedulers."""

from functools import partial
import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import OneCycleLR, StepLR
from minilearn import DataLoaders, Learner
from minilearn.callbacks import BatchSchedCB, OneCycleCB, Recorder


@pytest.mark.parametrize("opt_func", [torch.optim.SGD, partial(torch.optim.SGD, momentum=0.9), torch.optim.AdamW])
def test_one_cycle_lr_curve_matches_torch(make_learner, opt_func):
    learn = make_learner(opt_func=opt_func, cbs=Recorder())
    learn.fit(3, cbs=OneCycleCB(0.2, pct_start=0.3))
    # the same schedule built by hand, on a throwaway optimizer
    p = torch.zeros(1, requires_grad=True)
    ref_opt = opt_func([p], lr=0.1)
    has_momentum = "betas" in ref_opt.defaults or ref_opt.defaults.get("momentum", 0) > 0
    sched = OneCycleLR(ref_opt, max_lr=0.2, total_steps=15, pct_start=0.3, cycle_momentum=has_momentum)
    expected = []
    for _ in range(15):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        sched.step()
    assert learn.recorder.lrs == pytest.approx(expected, rel=1e-12)
    assert max(learn.recorder.lrs) == pytest.approx(0.2, rel=0.05)


def test_one_cycle_leaves_plain_sgd_without_momentum(make_learner):
    learn = make_learner()
    learn.fit(1, cbs=OneCycleCB(0.1))
    assert learn.opt.param_groups[0]["momentum"] == 0


def test_batch_sched_steps_once_per_training_batch(make_learner):
    learn = make_learner(lr=1.0, cbs=Recorder())
    cb = BatchSchedCB(partial(StepLR, step_size=2, gamma=0.5))
    learn.fit(1, cbs=cb)
    assert learn.recorder.lrs == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert cb.sched.last_epoch == 5


@pytest.mark.parametrize("n_batches", range(1, 9))
def test_one_cycle_runs_on_short_fits(n_batches):
    # OneCycleLR itself divides by zero when pct_start * total_steps is 1 (0.25 of 4 steps).
    learn = Learner(torch.nn.Linear(2, 1), DataLoaders([(torch.randn(4, 2), torch.randn(4, 1))] * n_batches, []),
                    F.mse_loss)
    cb = Recorder()
    learn.fit(1, cbs=[OneCycleCB(0.1), cb])
    assert len(cb.lrs) == n_batches and max(cb.lrs) <= 0.1 + 1e-12
