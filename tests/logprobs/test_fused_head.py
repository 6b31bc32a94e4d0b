"""FusedHead and TinyCausalLM(fused_head=True): a Learner trained through LinearLogits ends with the
same weights as one trained on the logits (TinyCausalLM, under LossCB and AccelerateCustomCB too,
and a Hugging Face GPT-2 built from a config); the wrapper's inputs, outputs and errors; validation
gathers under several processes keep the output layer whole."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from minilearn import DataLoaders, FusedHead, Learner
from minilearn.callbacks import AccelerateCB, AccelerateCustomCB, LossCB, MetricsCB
from minilearn.losses import KeyTokenWeightedLoss, LinearLogits, PolicyGradientLoss, WeightedCrossEntropy
from minilearn.demo.tiny_model import TinyCausalLM

V, T = 40, 8


def lm_batches(n_batches, bs=3, seed=0):
    """Mapping batches with padding, next-token targets (ignored at the padding), token weights and
    the per-token inputs of the policy-gradient losses."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, V, (bs, T), generator=g)
        mask = torch.ones(bs, T, dtype=torch.long)
        mask[0, -3:] = 0
        targets = torch.cat([ids[:, 1:], torch.full((bs, 1), -100)], 1).masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "target_tokens": targets,
                    "weights": torch.rand(bs, T, generator=g, dtype=torch.float64),
                    "logprobs": -torch.rand(bs, T, generator=g, dtype=torch.float64) - 3,
                    "advantages": torch.randn(bs, T, generator=g, dtype=torch.float64)})
    return out


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    return TinyCausalLM(V, dim=16, n_layers=1, n_heads=2, max_len=T).double()


def assert_same_weights(a: nn.Module, b: nn.Module, atol=1e-10):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=atol, rtol=0), (k, (sa[k] - sb[k]).abs().max().item())


def train(model, loss=None, cbs=(), epochs=1, seed=0):
    dls = DataLoaders(lm_batches(3, seed=seed), lm_batches(1, seed=seed + 1))
    learn = Learner(model, dls, loss, lr=0.3, cbs=list(cbs))
    learn.fit(epochs)
    return learn


# ---- a Learner through the fused head ends with the same weights ---------------------------------

def test_tiny_causal_lm_trains_to_the_same_weights_with_the_fused_head():
    plain, fused = tiny_lm(), tiny_lm()
    fused.fused_head = True
    before = copy.deepcopy(plain.state_dict())
    train(plain, WeightedCrossEntropy(), epochs=2)
    learn = train(fused, WeightedCrossEntropy(), epochs=2)
    assert any((before[k] - v).abs().max() > 1e-3 for k, v in plain.state_dict().items())  # it did train
    assert_same_weights(plain, fused)
    assert isinstance(learn.preds, LinearLogits)  # also in validation


def test_a_loss_swapped_in_with_loss_cb_works_on_the_fused_head():
    plain, fused = tiny_lm(), tiny_lm()
    fused.fused_head = True
    for model in (plain, fused):
        train(model, cbs=[LossCB(KeyTokenWeightedLoss([3, 7], alpha=2.0))])
    assert_same_weights(plain, fused)


def test_accelerate_custom_cb_keeps_linear_logits_and_trains_to_the_same_weights():
    plain, fused = tiny_lm(), tiny_lm()
    fused.fused_head = True
    for model in (plain, fused):
        train(model, cbs=[AccelerateCustomCB(PolicyGradientLoss("ppo"), gradient_accumulation_steps=2)])
    assert_same_weights(plain, fused)


def test_a_metric_that_needs_the_logits_materializes_them():
    def accuracy(preds, target_tokens):
        keep = target_tokens != -100
        return (preds.materialize().argmax(-1) == target_tokens)[keep].double().mean()

    model = tiny_lm()
    model.fused_head = True
    learn = train(model, WeightedCrossEntropy(), cbs=[MetricsCB(accuracy=accuracy)])
    model.fused_head = False  # the same model gives the logits again
    batch = lm_batches(1, seed=1)[0]
    keep = batch["target_tokens"] != -100
    expected = (model(batch["input_ids"], batch["attention_mask"]).argmax(-1) == batch["target_tokens"])[keep]
    assert learn.epoch_metrics["accuracy"] == pytest.approx(expected.double().mean().item(), abs=1e-6)  # float32 sums


def test_gpt2_trains_to_the_same_weights_with_the_fused_head():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=V, n_positions=T, bos_token_id=0,
                                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    plain = transformers.GPT2LMHeadModel(config).double()
    lm = copy.deepcopy(plain)
    fused = FusedHead.from_causal_lm(lm)
    assert fused.body is lm.transformer and fused.head is lm.lm_head  # shared, not copied
    train(plain, WeightedCrossEntropy())
    train(fused, WeightedCrossEntropy())
    assert_same_weights(plain, lm)


# ---- the wrapper ----------------------------------------------------------------------------------

class Body(nn.Module):
    """Embeds tokens; returns what `kind` says a body may return."""

    def __init__(self, kind):
        super().__init__()
        self.emb, self.kind = nn.Embedding(V, 4), kind

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids) * (1 if attention_mask is None else attention_mask[..., None])
        return {"tensor": h, "tuple": (h, None), "output": SimpleNamespace(last_hidden_state=h), "dict": {"h": h}}[self.kind]


@pytest.mark.parametrize("kind", ["tensor", "tuple", "output"])
def test_fused_head_reads_the_hidden_states_from_what_the_body_returns(kind):
    body, head = Body(kind), nn.Linear(4, V)
    ids, mask = torch.randint(0, V, (2, 5)), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = FusedHead(body, head)(ids, mask)
    assert isinstance(out, LinearLogits) and out.weight is head.weight and out.bias is head.bias
    assert torch.allclose(out.materialize(), head(body.emb(ids) * mask[..., None]))


def test_a_tied_head_may_be_an_embedding_or_its_weight():
    body = Body("tensor")
    ids = torch.randint(0, V, (2, 5))
    for head in (body.emb, body.emb.weight):
        out = FusedHead(body, head)(ids)
        assert out.weight is body.emb.weight and out.bias is None
    assert len(list(FusedHead(body, body.emb.weight).parameters())) == 1  # shared, counted once


def test_fused_head_refuses_what_it_cannot_use():
    with pytest.raises(TypeError, match=r"head must be the output layer: an nn.Linear, or an nn.Embedding or "
                                        r"nn.Parameter of shape \(V, D\) for a tied head; got ReLU"):
        FusedHead(Body("tensor"), nn.ReLU())
    with pytest.raises(TypeError, match=r"FusedHead's body returned dict; expected the last hidden states"):
        FusedHead(Body("dict"), nn.Linear(4, V))(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"hidden of shape \(1, 2, 4\) and weight of shape \(40, 3\) do not make logits"):
        FusedHead(Body("tensor"), nn.Linear(3, V))(torch.zeros(1, 2, dtype=torch.long))


class CausalLM(nn.Module):
    """The parts of a Hugging Face causal LM that `FusedHead.from_causal_lm` reads."""

    def __init__(self, head, **config):
        super().__init__()
        self.base_model, self.head, self.config = Body("tensor"), head, SimpleNamespace(**config)

    def get_output_embeddings(self):
        return self.head


def test_from_causal_lm_refuses_models_that_transform_their_logits_or_have_no_head():
    assert isinstance(FusedHead.from_causal_lm(CausalLM(nn.Linear(4, V), logit_scale=1.0)), FusedHead)
    with pytest.raises(ValueError, match=r"CausalLM transforms its logits after the output layer "
                                         r"\(config.final_logit_softcapping=30.0\)"):
        FusedHead.from_causal_lm(CausalLM(nn.Linear(4, V), final_logit_softcapping=30.0))
    with pytest.raises(ValueError, match=r"get_output_embeddings\(\) returned None"):
        FusedHead.from_causal_lm(CausalLM(None))


def test_validation_gathers_the_hidden_states_and_keeps_the_output_layer_whole():
    cb = AccelerateCB()
    # What gather_for_metrics does with two processes holding the same batch: concatenates.
    cb.acc = SimpleNamespace(num_processes=2, gather_for_metrics=lambda data: tuple(
        torch.cat([x, x]) if isinstance(x, torch.Tensor) else {k: torch.cat([v, v]) for k, v in x.items()}
        for x in data))
    h, w, b = torch.randn(3, 5, 4), torch.randn(V, 4), torch.randn(V)
    learn = SimpleNamespace(training=False, preds=LinearLogits(h, w, b), batch={"target_tokens": torch.zeros(3, 5)})
    cb.after_predict(learn)
    assert isinstance(learn.preds, LinearLogits) and learn.preds.shape == (6, 5, V)
    assert learn.preds.weight is w and learn.preds.bias is b and learn.batch["target_tokens"].shape == (6, 5)
