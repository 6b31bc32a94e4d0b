"""The plug-in losses are PyTorch losses: every loss module and function of `minilearn.losses`, with
every option, returns a 0-dim tensor on which `.backward()`, `.item()`, `float()`, formatting,
arithmetic and `accelerator.backward` work, whose arithmetic gives plain tensors, and which carries
its metrics and (when normalised) its total and denominator for the step owner.

Also: the values are those of Weaver's `cross_entropy` and `importance_sampling`, restated here in
float64 with nothing but `log_softmax` and `gather`; and `PolicyGradientLoss` takes Tinker's
`loss_fn_config` names and defaults."""

import copy
import pickle

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
# The Accelerate state reset of the Accelerate tests; `fresh_accelerate` is an autouse fixture there and here.

from minilearn import DataLoaders, Learner, LossTensor, NormalizedLoss
from minilearn.callbacks import LossCB, MetricsCB
from minilearn.inputs import split_loss_output
from minilearn.losses import (ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, PolicyGradientLoss, WeightedCrossEntropy,
                              default_clip_thresholds, importance_weighted_cross_entropy, key_token_weighted_loss,
                              policy_gradient_loss, weighted_cross_entropy)

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh

IGNORE, V = -100, 7
KINDS = ("importance_sampling", "ppo", "cispo", "dro")


def inputs(dtype=torch.float32, seed=0):
    """One batch of everything the token losses take, (3, 5) positions, a few targets ignored."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, V, generator=g, dtype=dtype)
    t = torch.randint(0, V, (3, 5), generator=g)
    t[0, 1] = t[2, 4] = IGNORE
    with torch.no_grad():  # sampler logprobs near the learner's: ratios on both sides of every clip
        q = torch.log_softmax(x, -1).gather(-1, t.clamp(min=0)[..., None])[..., 0] + 0.5 * torch.randn(3, 5, generator=g, dtype=dtype)
    return {"logits": x, "target_tokens": t, "weights": 2 * torch.rand(3, 5, generator=g, dtype=dtype),
            "importance_weights": 3 * torch.randn(3, 5, generator=g, dtype=dtype), "logprobs": q,
            "advantages": torch.randn(3, 5, generator=g, dtype=dtype), "input_ids": t.clamp(min=0),
            "attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [0] + [1] * 4]),
            "top_k": torch.randint(0, V, (3, 5, 2), generator=g)}


# Every loss module and function, with every option: name -> f(logits, batch).
LOSSES = {
    "WeightedCrossEntropy": lambda x, b: WeightedCrossEntropy()(x, b["target_tokens"], b["weights"]),
    "WeightedCrossEntropy_sum": lambda x, b: WeightedCrossEntropy("sum")(x, b["target_tokens"], b["weights"]),
    "WeightedCrossEntropy_top_k": lambda x, b: WeightedCrossEntropy()(x, b["top_k"], torch.ones(3, 5, 2)),
    "weighted_cross_entropy": lambda x, b: weighted_cross_entropy(x, b["target_tokens"], b["weights"]),
    "weighted_cross_entropy_sum": lambda x, b: weighted_cross_entropy(x, b["target_tokens"], b["weights"], "sum"),
    "ImportanceWeightedCrossEntropy": lambda x, b: ImportanceWeightedCrossEntropy()(x, b["target_tokens"], b["weights"],
                                                                    b["importance_weights"]),
    "ImportanceSamplingLoss_clip": lambda x, b: ImportanceWeightedCrossEntropy(1.5)(x, b["target_tokens"], b["weights"],
                                                                            b["importance_weights"]),
    "importance_weighted_cross_entropy": lambda x, b: importance_weighted_cross_entropy(x, b["target_tokens"], b["weights"],
                                                                      b["importance_weights"], clip_ratio=1.5),
    **{f"PolicyGradientLoss_{kind}": (lambda kind: lambda x, b: PolicyGradientLoss(kind)(
        x, b["target_tokens"], b["logprobs"], b["advantages"]))(kind) for kind in KINDS},
    **{f"policy_gradient_loss_{kind}": (lambda kind: lambda x, b: policy_gradient_loss(
        x, b["target_tokens"], b["logprobs"], b["advantages"], kind))(kind) for kind in KINDS},
    "KeyTokenWeightedLoss": lambda x, b: KeyTokenWeightedLoss([1, 2], alpha=2.0)(x, b["input_ids"]),
    "KeyTokenWeightedLoss_mask": lambda x, b: KeyTokenWeightedLoss([1, 2])(x, b["input_ids"], b["attention_mask"]),
    "KeyTokenWeightedLoss_pad": lambda x, b: KeyTokenWeightedLoss([1], pad_token_id=0)(x, b["input_ids"]),
    "key_token_weighted_loss": lambda x, b: key_token_weighted_loss(x, b["input_ids"], [3], 1.5, b["attention_mask"]),
}
SUMS = {name for name in LOSSES if name.endswith("_sum") or name.lower().startswith("policy")}


def grad_of(loss, x):
    return torch.autograd.grad(loss, x, retain_graph=True)[0]


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_is_a_pytorch_loss(name):
    b = inputs()
    x = b["logits"].clone().requires_grad_()
    loss = LOSSES[name](x, b)
    assert isinstance(loss, torch.Tensor) and type(loss) is LossTensor and loss.ndim == 0
    assert loss.grad_fn is not None and loss.dtype == torch.float32 and loss.metrics
    value = loss.item()
    assert isinstance(value, float) and float(loss) == value and torch.isfinite(loss)
    assert f"{loss:.5f}" == f"{value:.5f}" and f"{loss}" == f"{value}" and "LossTensor(" in repr(loss)
    # every operation gives a plain tensor, without the parts, its graph kept
    expected = grad_of(loss, x)
    for result, factor in [(0.5 * loss, 0.5), (loss + 1, 1), (loss - torch.tensor(2.0), 1), (loss / 4, 0.25),
                           (-loss, -1), (loss + loss, 2), (loss * torch.ones(()), 1), (torch.stack([loss]).sum(), 1),
                           (loss.float(), 1), (loss.clone(), 1), (loss.to("cpu"), 1), (loss.reshape(()), 1)]:
        assert type(result) is torch.Tensor and not hasattr(result, "total"), result
        assert torch.allclose(grad_of(result, x), factor * expected, atol=1e-6, rtol=1e-5)
    assert type(loss.detach()) is torch.Tensor and not loss.detach().requires_grad
    assert type(loss * loss) is torch.Tensor
    loss.backward(retain_graph=True)
    assert torch.equal(x.grad, expected)
    x.grad = None
    Accelerator(cpu=True).backward(loss)
    assert torch.allclose(x.grad, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_each_loss_carries_its_parts(name):
    b = inputs(torch.float64)
    x = b["logits"].clone().requires_grad_()
    loss = LOSSES[name](x, b)
    if name in SUMS:  # a sum: its own total, no denominator, averaged per micro-batch like any scalar
        assert loss.is_sum and loss.denominator is None and type(loss.total) is torch.Tensor
        assert torch.equal(loss.total.detach(), loss.detach())
        assert split_loss_output(loss, name)[2] is None
    else:
        assert not loss.is_sum and not loss.denominator.requires_grad and loss.total.requires_grad
        ratio = loss.total / loss.denominator.to(loss.total.dtype)
        assert abs(ratio.item() - loss.item()) < 1e-12
        assert torch.allclose(grad_of(ratio, x), grad_of(loss, x), atol=1e-12, rtol=0)
        assert split_loss_output(loss, name)[2] is loss


def test_store_loss_reads_parts_and_metrics_from_every_form_a_loss_returns():
    total, metrics = torch.tensor(3.0, requires_grad=True), {"n": torch.tensor(2.0)}
    for out in (NormalizedLoss(total, 2, metrics), NormalizedLoss(total, 2, metrics).as_tensor()):
        value, got, parts = split_loss_output(out, "loss")
        assert type(value) is LossTensor and value.item() == 1.5 and got == metrics
        assert parts.total is total and parts.denominator.item() == 2
    # (loss, metrics) around a LossTensor: both sets of metrics, the parts kept
    value, got, parts = split_loss_output((NormalizedLoss(total, 2, metrics).as_tensor(), {"m": 1.0}), "loss")
    assert got == {"n": metrics["n"], "m": 1.0} and parts is value
    # a sum, a combination of losses, a plain scalar: no parts
    assert split_loss_output(LossTensor.of_sum(total, metrics), "loss")[1:] == (metrics, None)
    combined = 0.5 * NormalizedLoss(total, 2).as_tensor() + total
    assert split_loss_output(combined, "loss")[1:] == ({}, None)
    assert split_loss_output((total, metrics), "loss") == (total, metrics, None)


def test_a_loss_without_a_graph_deep_copies_and_pickles_with_its_parts():
    b = inputs()
    with torch.no_grad():
        losses = [WeightedCrossEntropy()(b["logits"], b["target_tokens"], b["weights"]),
                  PolicyGradientLoss("ppo")(b["logits"], b["target_tokens"], b["logprobs"], b["advantages"])]
    for loss in losses:
        for copied in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss)), copy.deepcopy({"a": loss, "b": loss})["a"]):
            assert type(copied) is LossTensor and copied.item() == loss.item()
            assert torch.equal(copied.total, loss.total) and copied.metrics.keys() == loss.metrics.keys()
            assert (copied.denominator is None) == (loss.denominator is None)
            assert loss.denominator is None or torch.equal(copied.denominator, loss.denominator)
    # as for any tensor: one with a graph is detached first (`detach()` gives the plain value)
    x = b["logits"].clone().requires_grad_()
    with_graph = WeightedCrossEntropy()(x, b["target_tokens"], b["weights"])
    assert copy.deepcopy(with_graph.detach()).item() == with_graph.item()
    assert pickle.loads(pickle.dumps(with_graph)).item() == with_graph.item()


# ---- Weaver's reference losses ----------------------------------------------------------------------

def weaver_logprobs(logits, target_tokens):
    """log p(target) by log_softmax and gather, in float64; 0 where the target is ignored."""
    lp = torch.log_softmax(logits.double(), -1)
    if target_tokens.ndim == logits.ndim:  # (..., K) candidate targets
        picked = lp.gather(-1, target_tokens.clamp(min=0))
    else:
        picked = lp.gather(-1, target_tokens.clamp(min=0)[..., None])[..., 0]
    return torch.where(target_tokens == IGNORE, 0.0, picked)


def weaver_cross_entropy(logits, target_tokens, weights):
    """Weaver `cross_entropy`: -(sum_t w_t lp_t) / (sum_t w_t) over the counted tokens."""
    w = weights.double() * (target_tokens != IGNORE)
    return -(w * weaver_logprobs(logits, target_tokens)).sum() / w.sum()


def weaver_importance_sampling(logits, target_tokens, weights, importance_weights, clip_ratio=None):
    """Weaver `importance_sampling`: -(sum_t w_t iw_t lp_t) / (sum_t w_t), iw clipped to +-clip_ratio."""
    iw = importance_weights.double()
    if clip_ratio is not None:
        iw = iw.clamp(-clip_ratio, clip_ratio)
    w = weights.double() * (target_tokens != IGNORE)
    return -(w * iw * weaver_logprobs(logits, target_tokens)).sum() / w.sum()


def assert_equal_to_1e_10(loss, reference, x):
    assert type(loss) is LossTensor and loss.dtype == torch.float64
    assert abs(loss.item() - reference.item()) <= 1e-10
    assert (grad_of(loss, x) - grad_of(reference, x)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("targets", ["target_tokens", "top_k"])
def test_weighted_cross_entropy_is_weavers_cross_entropy(targets):
    b = inputs(torch.float64, seed=3)
    x = b["logits"].clone().requires_grad_()
    t = b[targets]
    w = b["weights"] if targets == "target_tokens" else torch.rand(t.shape, dtype=torch.float64)
    reference = weaver_cross_entropy(x, t, w)
    assert_equal_to_1e_10(WeightedCrossEntropy()(x, t, w), reference, x)
    assert_equal_to_1e_10(weighted_cross_entropy(x, t, w), reference, x)
    # Tinker's sum form: the numerator alone
    assert_equal_to_1e_10(WeightedCrossEntropy("sum")(x, t, w), reference * (w * (t != IGNORE)).sum(), x)


@pytest.mark.parametrize("clip_ratio", [None, 1.5])
def test_importance_sampling_loss_is_weavers_importance_sampling(clip_ratio):
    b = inputs(torch.float64, seed=4)
    x = b["logits"].clone().requires_grad_()
    args = b["target_tokens"], b["weights"], b["importance_weights"]
    reference = weaver_importance_sampling(x, *args, clip_ratio)
    assert_equal_to_1e_10(ImportanceWeightedCrossEntropy(clip_ratio)(x, *args), reference, x)
    assert_equal_to_1e_10(importance_weighted_cross_entropy(x, *args, clip_ratio), reference, x)


# ---- Tinker's loss_fn_config ------------------------------------------------------------------------

def tinker_policy_gradient(logits, target_tokens, logprobs, advantages, kind, clip_low_threshold=0.8,
                           clip_high_threshold=1.2, beta=0.1):
    """Tinker's documented loss functions, summed over the counted tokens (float64)."""
    mask = target_tokens != IGNORE
    lp = weaver_logprobs(logits, target_tokens)
    q, adv = logprobs.double(), advantages.double()
    ratio = torch.exp(torch.where(mask, lp - q, 0.0))
    clipped = torch.clamp(ratio, clip_low_threshold, clip_high_threshold)
    objective = {"importance_sampling": lambda: ratio * adv,
                 "ppo": lambda: torch.min(ratio * adv, clipped * adv),
                 "cispo": lambda: clipped.detach() * lp * adv,
                 "dro": lambda: lp * adv - 0.5 * beta * (lp - q) ** 2}[kind]()
    return -torch.where(mask, objective, 0.0).sum()


def test_tinker_defaults():
    assert default_clip_thresholds("cispo") == (0.0, 4.0)
    cispo, ppo = PolicyGradientLoss("cispo"), PolicyGradientLoss("ppo")
    assert (cispo.clip_low_threshold, cispo.clip_high_threshold) == (0.0, 4.0)
    assert (ppo.clip_low_threshold, ppo.clip_high_threshold) == (0.8, 1.2) and ppo.beta == 0.1
    b = inputs(torch.float64, seed=5)
    x = b["logits"].clone().requires_grad_()
    args = b["target_tokens"], b["logprobs"], b["advantages"]
    for kind, (low, high) in [("cispo", (0.0, 4.0)), ("ppo", (0.8, 1.2))]:
        reference = tinker_policy_gradient(x, *args, kind, low, high)
        assert_equal_to_1e_10(PolicyGradientLoss(kind)(x, *args), reference, x)
        assert_equal_to_1e_10(policy_gradient_loss(x, *args, kind), reference, x)
    # the one-sided clip is not PPO's: on this batch some ratios lie below 0.8
    assert PolicyGradientLoss("cispo")(x, *args).metrics["clip_fraction"] < \
        PolicyGradientLoss("cispo", clip_low_threshold=0.8, clip_high_threshold=1.2)(x, *args).metrics["clip_fraction"]


@pytest.mark.parametrize("kind, config", [
    ("cispo", {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0}),
    ("cispo", {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0}),
    ("ppo", {"clip_low_threshold": 0.9, "clip_high_threshold": 1.1}),
    ("ppo", {}),
    ("dro", {"beta": 0.05}),
    ("importance_sampling", {}),

])
def test_policy_gradient_loss_takes_a_tinker_loss_fn_config(kind, config):
    b = inputs(torch.float64, seed=6)
    x = b["logits"].clone().requires_grad_()
    args = b["target_tokens"], b["logprobs"], b["advantages"]
    defaults = dict(zip(("clip_low_threshold", "clip_high_threshold"), default_clip_thresholds(kind)))
    reference = tinker_policy_gradient(x, *args, kind, **{**defaults, **config})
    assert_equal_to_1e_10(PolicyGradientLoss(kind, **config)(x, *args), reference, x)
    assert_equal_to_1e_10(policy_gradient_loss(x, *args, kind, **config), reference, x)


def test_the_old_clip_names_are_gone():
    with pytest.raises(TypeError, match="clip_low"):
        PolicyGradientLoss("ppo", clip_low=0.8)


# ---- in a Learner -----------------------------------------------------------------------------------

class Policy(nn.Module):
    """Takes `input_ids` from a mapping batch, returns logits (B, T, V)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(V, 8), nn.Linear(8, V)

    def forward(self, input_ids):
        return self.head(torch.tanh(self.emb(input_ids)))


def test_sum_losses_show_their_metrics_in_metrics_cb():
    b = inputs()
    rows = [{k: b[k][i] for k in ("input_ids", "target_tokens", "logprobs", "advantages", "weights")} for i in range(3)]
    learn = Learner(Policy(), DataLoaders(DataLoader(rows, batch_size=2), []), lr=0.1, cbs=[MetricsCB()])
    for loss in (PolicyGradientLoss("cispo"), WeightedCrossEntropy("sum")):
        learn.fit(1, cbs=LossCB(loss), valid=False)
        assert learn.loss_parts is None and type(learn.loss) is LossTensor
        assert len(learn.loss_metrics) >= 2 and set(learn.loss_metrics) <= set(learn.epoch_metrics)


# ---- StepGradients: the one place losses become a step's gradient --------------------------------------

def _step_gradient(kind, splits, processes=1):
    """The gradient StepGradients leaves for a loss over 10 rows split into micro-batches at `splits`."""
    from minilearn.normalized_loss import StepGradients
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(10, 3, generator=g, dtype=torch.float64), torch.rand(10, generator=g, dtype=torch.float64)
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    grads = StepGradients(processes=processes)
    bounds = [0, *splits, 10]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        per_row = w[a:b] * torch.sin(x[a:b] @ theta + x[a:b].sum(1))
        loss = {"ratio": NormalizedLoss(per_row.sum(), w[a:b].sum()).as_tensor(), "sum": LossTensor.of_sum(per_row.sum()),
                "mean": per_row.mean()}[kind]
        parts = loss if kind == "ratio" else None
        grads.backward(loss, parts, ends_step=i == len(bounds) - 2)
    grads.finish([theta], micro_batches=len(bounds) - 1)
    return theta.grad, x, w


@pytest.mark.parametrize("splits", [(), (4,), (1, 5, 9)])
def test_step_gradients_give_the_whole_batch_gradient_however_the_step_is_split(splits):
    for kind in ("ratio", "sum"):
        got, x, w = _step_gradient(kind, splits)
        expected = (w[:, None] * torch.cos(x.sum(1))[:, None] * x).sum(0)  # d/dtheta at theta = 0
        torch.testing.assert_close(got, expected / (w.sum() if kind == "ratio" else 1), rtol=1e-12, atol=1e-12)
    got, x, w = _step_gradient("mean", splits)
    bounds = [0, *splits, 10]
    means = [(w[a:b, None] * torch.cos(x[a:b].sum(1))[:, None] * x[a:b]).mean(0) for a, b in zip(bounds, bounds[1:])]
    torch.testing.assert_close(got, torch.stack(means).mean(0), rtol=1e-12, atol=1e-12)  # the micro-batches' mean


def test_step_gradients_refuse_a_loss_that_changes_kind_within_a_step_and_start_afresh_after_finish():
    from minilearn.normalized_loss import StepGradients
    theta = torch.ones(2, requires_grad=True)
    grads = StepGradients()
    grads.backward(theta.sum(), ends_step=False)
    with pytest.raises(ValueError, match="was a mean for earlier micro-batches of this step and is a sum now"):
        grads.backward(LossTensor.of_sum(theta.sum()), ends_step=True)
    grads.finish([theta])
    grads.backward(LossTensor.of_sum(theta.sum()), ends_step=True)  # a new step may be of another kind


def test_step_gradients_reset_forgets_an_open_step():
    from minilearn.normalized_loss import StepGradients
    theta = torch.ones(2, requires_grad=True)
    grads = StepGradients()
    grads.backward(*[NormalizedLoss(theta.sum(), 4.0).as_tensor()] * 2, ends_step=False)  # a step left open
    grads.reset()
    theta.grad = None
    grads.backward(theta.sum() * 3, ends_step=True)  # a mean alone in its step: not divided by the old 4
    grads.finish([theta])
    torch.testing.assert_close(theta.grad, torch.full((2,), 3.0))
