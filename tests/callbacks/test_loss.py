"""LossCB swaps the loss for one fit; the plug-in losses train under TrainCB, LossCB and
AccelerateCustomCB, exactly normalised under gradient accumulation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
# The Accelerate state reset of the Accelerate tests; `fresh_accelerate` is an autouse fixture there and here.
from minilearn.callbacks import reset_accelerate_state

from minilearn import DataLoaders, Learner
from minilearn.callbacks import AccelerateCB, AccelerateCustomCB, LossCB, MetricsCB
from minilearn.losses import (ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, PolicyGradientLoss, WeightedCrossEntropy)

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh

V, T = 11, 6


class TinyLM(nn.Module):
    """Takes `input_ids` (and `attention_mask`) by name from a mapping batch, returns logits (B, T, V)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.head = nn.Embedding(V, 8), nn.Linear(8, V)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.tanh(self.emb(input_ids)))


def lm_batches(n=4, bs=4, seed=0):
    """Mapping batches with what every loss here asks for; rows of varying length, right padded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (bs, T), generator=g)
        mask = (torch.arange(T)[None] < torch.randint(2, T + 1, (bs, 1), generator=g)).long()
        targets = torch.where(mask.bool(), torch.roll(ids, -1, 1), -100)
        out.append({"input_ids": ids, "attention_mask": mask, "target_tokens": targets,
                    "weights": torch.rand(bs, T, generator=g) * (torch.rand(bs, T, generator=g) > 0.3),
                    "importance_weights": 0.5 + torch.rand(bs, T, generator=g),
                    "logprobs": -2.4 + 0.2 * torch.randn(bs, T, generator=g),
                    "advantages": torch.randn(bs, T, generator=g)})
    return out


def merged(batches):
    return [{k: torch.cat([b[k] for b in batches]) for k in batches[0]}]


def plain_ce(logits, target_tokens):
    return F.cross_entropy(logits.reshape(-1, V), target_tokens.reshape(-1), ignore_index=-100)


class Counting(nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.loss, self.calls = loss, 0

    def forward(self, logits, input_ids, attention_mask=None):
        self.calls += 1
        return self.loss(logits, input_ids, attention_mask)


def test_loss_cb_swaps_the_loss_for_one_fit_and_back(capsys):
    calls = []

    def counted_ce(logits, target_tokens):
        calls.append(1)
        return plain_ce(logits, target_tokens)

    batches = lm_batches()
    metrics = MetricsCB()
    learn = Learner(TinyLM(), DataLoaders(batches, batches[:1]), counted_ce, cbs=metrics)
    key = Counting(KeyTokenWeightedLoss([1, 2], alpha=2.0))
    cb = LossCB(key)
    learn.fit(1, cbs=cb)
    assert key.calls == 5 and not calls  # 4 training batches and 1 validation batch, all through LossCB
    assert metrics.history[0]["mean_sample_weight"] >= 2.0
    with learn.added_cbs(cb):
        learn.show_cbs()
    assert "get_loss    LossCB (order 10)" in capsys.readouterr().out
    learn.fit(1)
    assert cb not in learn.cbs and key.calls == 5 and len(calls) == 5  # TrainCB and loss_func again
    assert "mean_sample_weight" not in metrics.history[0]


def test_loss_cb_gives_the_weights_of_a_hand_written_loop():
    batches = lm_batches(n=3)
    loss = WeightedCrossEntropy()
    learn = Learner(TinyLM(), DataLoaders(batches, []), plain_ce, lr=0.3)
    learn.fit(1, cbs=LossCB(loss))
    ref = TinyLM()
    opt = torch.optim.SGD(ref.parameters(), lr=0.3)
    for b in batches:
        logits = ref(b["input_ids"])
        lp = torch.log_softmax(logits, -1).gather(-1, b["target_tokens"].clamp(min=0)[..., None])[..., 0]
        w = b["weights"] * (b["target_tokens"] != -100)
        (-(w * lp).sum() / w.sum()).backward()
        opt.step()
        opt.zero_grad()
    for p, q in zip(learn.model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_loss_cb_with_a_tuple_batch():
    g = torch.Generator().manual_seed(0)
    x, y, w = torch.randn(16, 3, generator=g), torch.randint(0, 4, (16,), generator=g), torch.rand(16, generator=g)
    batches = [(x[i:i + 4], y[i:i + 4], w[i:i + 4]) for i in range(0, 16, 4)]
    learn = Learner(nn.Linear(3, 4), DataLoaders(batches, []), lambda out, y, w: F.cross_entropy(out, y))
    learn.fit(1, cbs=LossCB(WeightedCrossEntropy("sum")))  # target_tokens, weights bind to batch[1:] in order
    assert learn.loss_metrics["weight_sum"].item() == pytest.approx(w[12:].sum().item())


def test_a_bad_batch_under_loss_cb_raises_and_leaves_the_learner_usable():
    batches = lm_batches(n=2)
    bad = [dict(b, weights=b["weights"][:, :-1]) for b in batches]
    learn = Learner(TinyLM(), DataLoaders(bad, []), plain_ce)
    with pytest.raises(ValueError, match=r"weights of shape \(4, 5\) must have the shape of target_tokens, \(4, 6\)"):
        learn.fit(1, cbs=LossCB(WeightedCrossEntropy()))
    assert not any(isinstance(cb, LossCB) for cb in learn.cbs)
    learn.fit(1)


LOSSES = {
    "weighted_ce": lambda: WeightedCrossEntropy(),
    "importance_sampling": lambda: ImportanceWeightedCrossEntropy(clip_ratio=1.2),
    "key_token": lambda: KeyTokenWeightedLoss([1, 2], alpha=1.5),

}


def weights_after(batches, cbs, lr=0.5):
    learn = Learner(TinyLM(), DataLoaders(batches, []), plain_ce, lr=lr)
    learn.fit(1, cbs=cbs)
    return list(learn.model.parameters())


@pytest.mark.parametrize("name", list(LOSSES))
def test_under_accelerate_custom_cb_accumulated_micro_batches_give_the_whole_batch_step(name):
    batches = lm_batches(n=4)
    ref = weights_after(merged(batches), LossCB(LOSSES[name]()))  # one step on all 16 rows
    reset_accelerate_state()
    got = weights_after(batches, AccelerateCustomCB(LOSSES[name](), gradient_accumulation_steps=4))
    for p, q in zip(got, ref):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)


def test_loss_cb_under_accelerate_cb_and_bf16():
    batches = lm_batches(n=4)
    ref = weights_after(merged(batches), LossCB(KeyTokenWeightedLoss([1, 2])))
    reset_accelerate_state()
    got = weights_after(batches, [AccelerateCB(gradient_accumulation_steps=4), LossCB(KeyTokenWeightedLoss([1, 2]))])
    for p, q in zip(got, ref):
        assert torch.allclose(p, q, atol=1e-6, rtol=0)
    reset_accelerate_state()
    loss = PolicyGradientLoss("ppo")
    learn = Learner(TinyLM(), DataLoaders(batches, batches[:1]), plain_ce, cbs=MetricsCB())
    learn.fit(1, cbs=AccelerateCustomCB(loss, mixed_precision="bf16"))
    assert learn.loss.dtype == torch.float32 and torch.isfinite(learn.loss)
    assert {"mean_ratio", "clip_fraction", "mean_advantage"} <= set(learn.epoch_metrics)
