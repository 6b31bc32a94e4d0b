"""What fit does: the optimizer across calls, eval mode and no_grad in validation, cleanup on errors,
and the same weights as a hand-written PyTorch loop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import Callback, DataLoaders, Learner

from conftest import regression_dls


class Spy(Callback):
    def __init__(self):
        self.modes, self.grad = [], []

    def after_predict(self, learn):
        self.modes.append((learn.training, learn.model.training))
        self.grad.append(torch.is_grad_enabled())


def test_validation_runs_in_eval_mode_without_gradients(make_learner):
    spy = Spy()
    learn = make_learner(cbs=spy)
    learn.fit(1)
    assert spy.modes == [(True, True)] * 5 + [(False, False)] * 2
    assert spy.grad == [True] * 5 + [False] * 2


def test_train_and_valid_flags(make_learner):
    spy = Spy()
    learn = make_learner(cbs=spy)
    learn.fit(1, valid=False)
    assert len(spy.modes) == 5
    learn.fit(1, train=False)
    assert len(spy.modes) == 7


def test_the_optimizer_survives_between_fits_and_lr_changes_it(make_learner):
    learn = make_learner(lr=0.05, opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
    learn.fit(1)
    opt = learn.opt
    buf = opt.state[next(iter(learn.model.parameters()))]["momentum_buffer"].clone()
    learn.fit(1, lr=0.01)
    assert learn.opt is opt and learn.lr == 0.01
    assert all(g["lr"] == 0.01 for g in opt.param_groups)
    assert not torch.equal(buf, opt.state[next(iter(learn.model.parameters()))]["momentum_buffer"])
    learn.fit(1, reset_opt=True)
    assert learn.opt is not opt and learn.opt.param_groups[0]["lr"] == 0.01


def test_two_fits_equal_one_longer_fit(make_learner):
    a, b = make_learner(), make_learner()
    a.fit(1)
    a.fit(1)
    b.fit(2)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_same_final_weights_as_a_hand_written_loop():
    torch.manual_seed(0)
    x, y = torch.randn(100, 5), torch.randint(0, 3, (100,))
    ds = TensorDataset(x, y)

    def model():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))

    m1 = model()
    torch.manual_seed(2)
    learn = Learner(m1, DataLoaders(DataLoader(ds, batch_size=16, shuffle=True), []), F.cross_entropy, lr=0.1)
    learn.fit(3)

    m2 = model()
    opt = torch.optim.SGD(m2.parameters(), lr=0.1)
    torch.manual_seed(2)
    dl = DataLoader(ds, batch_size=16, shuffle=True)
    for _ in range(3):
        for xb, yb in dl:
            loss = F.cross_entropy(m2(xb), yb)
            loss.backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


class Boom(Callback):
    def __init__(self, where="after_loss"):
        setattr(self, where, self.boom)

    def boom(self, learn):
        raise RuntimeError("boom")


@pytest.mark.parametrize("model_was_training", [True, False])
def test_fit_that_raises_removes_temporary_callbacks_and_restores_mode(make_learner, model_was_training):
    learn = make_learner()
    learn.model.train(model_was_training)
    n = len(learn.cbs)
    spy = Spy()
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(1, cbs=[spy, Boom()])
    assert len(learn.cbs) == n and spy not in learn.cbs
    assert learn.model.training is model_was_training
    learn.fit(1)  # and the next fit works


def test_keyboard_interrupt_also_cleans_up(make_learner):
    learn = make_learner()

    class Interrupt(Callback):
        def after_batch(self, learn):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, cbs=Interrupt())
    assert len(learn.cbs) == 1 and learn.model.training
    learn.fit(1)


def test_mode_is_restored_after_a_normal_fit(make_learner):
    learn = make_learner()
    learn.model.eval()
    learn.fit(1)
    assert not learn.model.training


def test_any_object_with_train_and_valid_works_as_dls():
    class MyData:
        train = [(torch.ones(4, 2), torch.zeros(4, 1))] * 3
        valid = ((torch.ones(2, 2), torch.zeros(2, 1)) for _ in range(1))

    learn = Learner(nn.Linear(2, 1), MyData(), F.mse_loss)
    learn.fit(1)
    assert learn.iter == 0 and not learn.training


def test_loss_func_may_be_omitted_when_a_callback_provides_it(make_learner):
    class L1(Callback):
        order = 5

        def get_loss(self, learn):
            learn.loss = (learn.preds - learn.batch[1]).abs().mean()

    learn = make_learner(loss_func=None, cbs=L1())
    learn.fit(1)
    learn.remove_cbs(L1)
    with pytest.raises(ValueError, match="no loss_func"):
        learn.fit(1)


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_bad_epoch_counts_are_refused(make_learner, bad):
    learn = make_learner()
    with pytest.raises(ValueError, match="n_epochs"):
        learn.fit(bad)


def test_zero_epochs_does_nothing_but_is_fine(make_learner):
    learn = make_learner()
    before = [p.clone() for p in learn.model.parameters()]
    learn.fit(0)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))


def test_fit_with_an_empty_training_loader_runs():
    learn = Learner(nn.Linear(3, 1), regression_dls(n_train=0), F.mse_loss)
    learn.fit(1)


def test_learner_arguments_in_the_wrong_order_or_of_the_wrong_kind_are_refused_at_once():
    model, dls = nn.Linear(3, 1), regression_dls()
    with pytest.raises(TypeError, match=r"takes the model first, got DataLoaders as the model: the model and dls are "
                                        r"the wrong way round"):
        Learner(dls, model, F.mse_loss)
    with pytest.raises(TypeError, match=r"dls must have `train` and `valid` .* got DataLoader: wrap the loaders"):
        Learner(model, dls.train, F.mse_loss)
    with pytest.raises(TypeError, match=r"got <class 'torch.nn.modules.loss.MSELoss'>: pass an instance, "
                                        r"loss_func=MSELoss\(\)"):
        Learner(model, dls, nn.MSELoss)
    with pytest.raises(TypeError, match="got 'mse': pass a callable"):
        Learner(model, dls, "mse")
    Learner(model, dls, nn.MSELoss()).fit(1)
