"""Batches as tuples and mappings; models and losses take their inputs by parameter name."""

from collections import OrderedDict

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilearn import BatchWarning, DataLoaders, Learner, LossOutputError, MissingInputError, TrainCB
from minilearn.callbacks import MetricsCB
from minilearn.inputs import loss_call, select_output, signature_of
from minilearn.losses import KeyTokenWeightedLoss


class Output(OrderedDict):
    """Stands in for a Hugging Face ModelOutput: a mapping whose fields are also attributes."""

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


class TokenModel(nn.Module):
    """A mapping-batch model: takes input_ids and attention_mask by name, returns .logits."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)
        self.seen = []

    def forward(self, input_ids, attention_mask=None):
        self.seen.append(sorted(k for k, v in (("input_ids", input_ids), ("attention_mask", attention_mask)) if v is not None))
        return Output(logits=self.head(self.emb(input_ids)))


class WeightedCE(nn.Module):
    """A token loss naming its inputs: -(sum w lp) / sum w, plus a metric."""

    def forward(self, logits, target_tokens, weights):
        lp = torch.log_softmax(logits.float(), -1).gather(-1, target_tokens[..., None])[..., 0]
        loss = -(lp * weights).sum() / weights.sum()
        return loss, {"weight_sum": weights.sum()}


def token_batches(n=3, bs=4, T=5, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (bs, T), generator=g),
             "attention_mask": torch.ones(bs, T, dtype=torch.long),
             "target_tokens": torch.randint(0, vocab, (bs, T), generator=g),
             "weights": torch.rand(bs, T, generator=g)} for _ in range(n)]


def test_mapping_batch_model_gets_the_keys_its_forward_names_and_loss_gets_its_inputs():
    model = TokenModel()
    batches = token_batches()
    metrics = MetricsCB()
    learn = Learner(model, DataLoaders(batches, batches[:1]), WeightedCE(), cbs=metrics)
    learn.fit(1)
    assert model.seen[0] == ["attention_mask", "input_ids"]
    # (loss, metrics) reached MetricsCB: the weight sums are averaged per epoch
    expected = sum(b["weights"].sum().item() * 4 for b in batches) / 12
    assert metrics.history[0]["weight_sum"] == pytest.approx(expected, rel=1e-6)


def test_model_inputs_chooses_the_keys():
    model = TokenModel()
    learn = Learner(model, DataLoaders(token_batches(1), []), WeightedCE(), cbs=TrainCB(model_inputs=["input_ids"]))
    learn.fit(1)
    assert model.seen == [["input_ids"]]


def test_missing_loss_input_names_the_loss_the_key_and_the_batch_keys():
    batches = token_batches(1)
    del batches[0]["weights"]
    learn = Learner(TokenModel(), DataLoaders(batches, []), WeightedCE())
    with pytest.raises(MissingInputError) as err:
        learn.fit(1)
    msg = str(err.value)
    assert "WeightedCE" in msg and "'weights'" in msg and "'target_tokens'" in msg and "input_ids" in msg
    assert isinstance(err.value, KeyError)
    batches[0]["weights"] = torch.ones(4, 5)  # fixed: the same learner trains
    learn.fit(1)


def test_missing_input_in_a_tuple_batch_says_how_many_items_there_were():
    def loss(preds, y, w):
        return ((preds - y) ** 2 * w).mean()
    learn = Learner(nn.Linear(2, 1), DataLoaders([(torch.ones(3, 2), torch.zeros(3, 1))], []), loss)
    with pytest.raises(MissingInputError, match=r"needs the input 'w'.*tuple of 2 items.*leaving 1"):
        learn.fit(1)


def test_model_gets_nothing_it_names():
    learn = Learner(TokenModel(), DataLoaders([{"ids": torch.zeros(2, 3, dtype=torch.long)}], []), WeightedCE())
    with pytest.raises(MissingInputError, match=r"TokenModel takes \['input_ids', 'attention_mask'\].*keys \['ids'\]") as err:
        learn.fit(1)
    assert "did you mean" not in str(err.value)  # 'ids' is not close to either name


def test_a_misnamed_input_gets_the_nearest_batch_key():
    batches = token_batches(1)

    def loss(logits, target_token, weights):  # one letter short
        return WeightedCE()(logits, target_token, weights)

    learn = Learner(TokenModel(), DataLoaders(batches, []), loss)
    with pytest.raises(MissingInputError, match=r"needs the input 'target_token' .*; did you mean 'target_tokens'\?\n"):
        learn.fit(1)
    learn.loss_func = WeightedCE()  # fixed: the same learner trains
    learn.fit(1)
    misnamed = [{"input_id": b["input_ids"], **{k: b[k] for k in ("target_tokens", "weights")}} for b in batches]
    learn.dls = DataLoaders(misnamed, [])
    with pytest.raises(MissingInputError, match=r"\['input_id', 'target_tokens', 'weights'\] \(did you mean "
                                                r"'input_ids' for the batch's 'input_id'\?\)\. Pass TrainCB"):
        learn.fit(1)
    learn.dls = DataLoaders(batches, [])
    learn.fit(1)


def test_tuple_batch_extra_items_bind_in_order_and_n_inp_splits_the_inputs():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, a, b):
            return self.lin(a + b)

    seen = {}

    def loss(preds, y, w):
        seen["w"] = w
        return ((preds - y) ** 2 * w).mean()

    batch = (torch.ones(3, 2), torch.ones(3, 2), torch.zeros(3, 1), torch.full((3, 1), 2.0))
    learn = Learner(TwoIn(), DataLoaders([batch], []), loss, n_inp=2)
    learn.fit(1)
    assert torch.equal(seen["w"], batch[3])


def test_plain_functions_get_only_as_many_inputs_as_they_take():
    # F.cross_entropy has more optional parameters (weight, ...); a 3-item batch fills `target` only
    # when n_inp=2 leaves one item
    batch = (torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    out = loss_call(F.cross_entropy, batch[0], batch, n_inp=2)
    assert torch.allclose(out, F.cross_entropy(batch[0], batch[2]))


def test_select_output_follows_the_first_parameter_name():
    out = Output(logits=torch.zeros(1), hidden_states=torch.ones(1))
    assert select_output(out, "hidden_states") is out["hidden_states"]
    assert select_output(out, "logits") is out["logits"]
    assert select_output(out, "input") is out["logits"]  # e.g. F.cross_entropy on a ModelOutput
    t = torch.zeros(1)
    assert select_output(t, "logits") is t
    pair = (t, t)
    assert select_output(pair, "preds") is pair


def test_signature_of_a_module_reads_forward():
    sig = signature_of(WeightedCE())
    assert sig.first == "logits" and sig.names == ("target_tokens", "weights") and sig.required == sig.names


@pytest.mark.parametrize("ret, match", [
    (lambda p, y: (p - y) ** 2, r"returned a tensor of shape \(3, 1\); expected a scalar"),
    (lambda p, y: 1.0, "returned float; expected a scalar tensor"),
    (lambda p, y: (((p - y) ** 2).mean(), 1.0, 2.0), "returned a tuple of 3 items"),
])
def test_bad_loss_returns_are_named(ret, match):
    learn = Learner(nn.Linear(2, 1), DataLoaders([(torch.ones(3, 2), torch.zeros(3, 1))], []), ret)
    with pytest.raises(LossOutputError, match=match):
        learn.fit(1)
    learn.loss_func = F.mse_loss
    learn.fit(1)


def test_a_padded_batch_without_a_mask_for_a_loss_that_takes_one_warns_once_a_fit():
    class IdsOnly(nn.Module):  # takes no attention_mask itself
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 11)

        def forward(self, input_ids):
            return self.emb(input_ids)

    g = torch.Generator().manual_seed(0)
    lengths = [[5, 3, 2, 5], [4, 5, 2, 2], [5, 5, 1, 3]]  # right padding with 0 to the longest of each batch
    batches = [{"input_ids": torch.randint(1, 11, (4, 5), generator=g) * (torch.arange(5) < torch.tensor(n)[:, None])}
               for n in lengths]
    learn = Learner(IdsOnly(), DataLoaders(batches, batches[:1]), KeyTokenWeightedLoss([3]))
    for _ in range(2):  # a 3-batch fit warns once, and the next fit once more
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            learn.fit(1)
        messages = [str(w.message) for w in seen if w.category is BatchWarning]
        assert len(messages) == 1
    assert "loss KeyTokenWeightedLoss counts it as targets" in messages[0] and "attends" not in messages[0]
    # With the mask there is nothing to say.
    for b in batches:
        b["attention_mask"] = (b["input_ids"] != 0).long()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BatchWarning)
        learn.fit(1)
