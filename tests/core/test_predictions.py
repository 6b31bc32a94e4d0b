"""get_preds and top_losses: the model applied by hand (tuple and mapping batches, a Hugging Face model
under AccelerateCustomCB, a fused head), one loss per item equal to the loss on that item alone, the
learner left as it was. Two processes against one: tests/integration/test_resume_multiprocess.py."""

import pytest
import torch
import torch.nn.functional as F
from support import collator, dataset, gpt2
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import DataLoaders, Learner, LossOutputError, TrainCB
from minilearn.callbacks import AccelerateCustomCB, LossCB
from minilearn.demo import TinyCausalLM
from minilearn.losses import (ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, PolicyGradientLoss,
                              WeightedCrossEntropy)
from minilearn.predictions import Predictions


def tuple_learner(n=20, bs=6):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True), DataLoader(TensorDataset(x, y), batch_size=bs))
    return Learner(model, dls, F.cross_entropy), x, y


def test_tuple_batches_give_the_model_applied_by_hand_and_each_item_s_loss():
    learn, x, y = tuple_learner()
    learn.fit(1)
    out = learn.get_preds(with_loss=True)
    assert isinstance(out, Predictions)
    with torch.no_grad():
        logits = learn.model(x)
    torch.testing.assert_close(out.preds, logits, rtol=0, atol=1e-12)
    assert torch.equal(out.targets, y)
    torch.testing.assert_close(out.losses, F.cross_entropy(logits, y, reduction="none"), rtol=1e-12, atol=1e-12)
    assert learn.get_preds().losses is None


def test_the_learner_is_left_as_it_was():
    learn, x, y = tuple_learner()
    learn.fit(1)
    learn.model.train()
    before = (learn.dl, learn.batch, learn.preds, learn.loss, learn.training, list(learn.cbs))
    learn.get_preds(dl=DataLoader(TensorDataset(x[:5], y[:5]), batch_size=2), with_loss=True)
    after = (learn.dl, learn.batch, learn.preds, learn.loss, learn.training, list(learn.cbs))
    assert all(a is b for a, b in zip(before[:4], after[:4])) and before[4:] == after[4:]
    assert learn.model.training


def test_a_loss_callback_s_loss_is_the_one_used_per_item():
    learn, x, y = tuple_learner()

    def squared_margin(preds, target):
        return ((preds.max(-1).values - preds.gather(-1, target[:, None])[:, 0]) ** 2).mean()

    with learn.added_cbs(LossCB(squared_margin)):
        losses = learn.get_preds(with_loss=True).losses
    with torch.no_grad():
        p = learn.model(x)
    torch.testing.assert_close(losses, (p.max(-1).values - p.gather(-1, y[:, None])[:, 0]) ** 2, rtol=1e-12, atol=0)


def test_top_losses_are_the_k_largest_largest_first():
    learn, x, y = tuple_learner()
    with torch.no_grad():
        per_item = F.cross_entropy(learn.model(x), y, reduction="none")
    indices, losses = learn.top_losses(k=4)
    want = per_item.topk(4)
    assert torch.equal(indices, want.indices)
    torch.testing.assert_close(losses, want.values, rtol=1e-12, atol=0)
    assert len(learn.top_losses(k=100)[0]) == 20


def test_padded_dict_batches_of_a_hugging_face_model_under_accelerate():
    dls = DataLoaders.from_dsets(dataset(16, 0), dataset(10, 1), bs=4, collate_fn=collator())
    model = gpt2()
    loss = WeightedCrossEntropy()
    learn = Learner(model, dls, cbs=AccelerateCustomCB(loss, cpu=True))
    out = learn.get_preds(with_loss=True)
    items = [collator()([dataset(10, 1)[i]]) for i in range(10)]  # each item alone, unpadded
    model.eval()  # as get_preds runs it (GPT-2 has dropout)
    longest = max(b["input_ids"].shape[1] for b in items)
    assert out.preds.logits.shape[:2] == (10, longest) and set(out.targets) == {"target_tokens"}
    with torch.no_grad():
        for i, item in enumerate(items):
            logits = model(input_ids=item["input_ids"], attention_mask=item["attention_mask"]).logits
            T = logits.shape[1]
            torch.testing.assert_close(out.preds.logits[i, :T], logits[0], rtol=1e-5, atol=1e-5)
            assert torch.equal(out.targets["target_tokens"][i, :T], item["target_tokens"][0])
            assert (out.targets["target_tokens"][i, T:] == -100).all()  # padding added to join the batches
            assert out.losses[i].item() == pytest.approx(loss(logits, item["target_tokens"]).item(), rel=1e-5)


def test_a_fused_head_gives_linear_logits_that_materialize_to_the_logits():
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (6, 5))
    batches = [{"input_ids": ids[i:i + 3], "target_tokens": ids[i:i + 3]} for i in (0, 3)]
    model = TinyCausalLM(11, dim=16, n_layers=1, n_heads=2, fused_head=True)
    learn = Learner(model, DataLoaders([], batches), WeightedCrossEntropy())
    out = learn.get_preds(with_loss=True)
    model.fused_head = False
    with torch.no_grad():
        logits = model(ids)
    torch.testing.assert_close(out.preds.materialize(), logits, rtol=1e-5, atol=1e-6)
    want = torch.stack([WeightedCrossEntropy()(logits[i:i + 1], ids[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(out.losses, want.as_subclass(torch.Tensor), rtol=1e-5, atol=1e-6)


def test_an_empty_loader_is_an_error():
    learn, _, _ = tuple_learner()
    with pytest.raises(ValueError, match="without batches"):
        learn.get_preds(dl=[])


@pytest.mark.parametrize("make", [lambda: WeightedCrossEntropy(), lambda: WeightedCrossEntropy(reduction="sum"),
                                  lambda: KeyTokenWeightedLoss([2, 5], alpha=1.5),
                                  lambda: ImportanceWeightedCrossEntropy(clip_ratio=1.2),
                                  lambda: PolicyGradientLoss("ppo"), lambda: PolicyGradientLoss("dro")],
                         ids=["weight-mean", "sum", "key-token", "importance-weighted", "ppo", "dro"])
def test_a_plug_in_loss_s_per_item_form_is_the_loss_of_each_item_alone(make):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 7, (5, 6), generator=g)
    targets[1, 3:] = -100
    targets[2] = -100  # nothing to predict: 0
    weights = torch.rand(5, 6, generator=g, dtype=torch.float64)
    weights[3] = 0  # weights that sum to zero: 0
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[4, 2:] = 0
    loss = make()
    iw = torch.rand(5, 6, generator=g, dtype=torch.float64) * 2
    if isinstance(loss, PolicyGradientLoss):
        q, adv = -torch.rand(5, 6, generator=g, dtype=torch.float64) * 3, torch.randn(5, 6, generator=g, dtype=torch.float64)
        inputs = (targets, q, adv)
        alone = lambda i: loss(logits[i:i + 1], targets[i:i + 1], q[i:i + 1], adv[i:i + 1])  # noqa: E731
    elif isinstance(loss, ImportanceWeightedCrossEntropy):
        inputs = (targets, weights, iw)
        alone = lambda i: loss(logits[i:i + 1], targets[i:i + 1], weights[i:i + 1], iw[i:i + 1])  # noqa: E731
    elif isinstance(loss, KeyTokenWeightedLoss):
        inputs, alone = (targets.clamp(min=0), mask), lambda i: loss(logits[i:i + 1], targets.clamp(min=0)[i:i + 1], mask[i:i + 1])
    else:
        inputs, alone = (targets, weights), lambda i: loss(logits[i:i + 1], targets[i:i + 1], weights[i:i + 1])
    per_item = loss.per_item(logits, *inputs)
    assert per_item.shape == (5,)
    torch.testing.assert_close(per_item, torch.stack([alone(i).as_subclass(torch.Tensor) for i in range(5)]),
                               rtol=1e-12, atol=1e-12)


def test_get_preds_uses_the_loss_s_per_item_form_and_checks_its_shape():
    class Halved(nn.Module):
        def forward(self, preds, target):
            return F.cross_entropy(preds, target)

        def per_item(self, preds, target):
            return F.cross_entropy(preds, target, reduction="none") / 2

    learn, x, y = tuple_learner()
    with learn.added_cbs(LossCB(Halved())):
        losses = learn.get_preds(with_loss=True).losses
    with torch.no_grad():
        torch.testing.assert_close(losses, F.cross_entropy(learn.model(x), y, reduction="none") / 2)

    class Wrong(Halved):
        def per_item(self, preds, target):
            return preds.sum()

    learn.loss_func = Wrong()
    with pytest.raises(LossOutputError, match=r"Wrong.per_item must return one value per item, shape \(6,\), got \(\)"):
        learn.get_preds(with_loss=True)


def test_the_keys_the_model_takes_are_those_the_predict_owner_passes():
    # A model whose forward takes **kwargs names no inputs: TrainCB(model_inputs=) says which keys go to it,
    # and get_preds counts the rest (and only the rest) as targets.
    class ByName(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, **kwargs):
            return self.lin(kwargs["x"] * kwargs["scale"])

    g = torch.Generator().manual_seed(0)
    batches = [{"x": torch.randn(4, 3, generator=g), "scale": torch.full((4, 1), 2.0),
                "y": torch.randint(0, 2, (4,), generator=g)} for _ in range(2)]
    learn = Learner(ByName(), DataLoaders(batches, batches), lambda preds, y: F.cross_entropy(preds, y),
                    cbs=TrainCB(model_inputs=["x", "scale"]))
    out = learn.get_preds()
    assert set(out.targets) == {"y"} and torch.equal(out.targets["y"], torch.cat([b["y"] for b in batches]))
    with torch.no_grad():
        torch.testing.assert_close(out.preds, torch.cat([learn.model.lin(b["x"] * 2) for b in batches]))
