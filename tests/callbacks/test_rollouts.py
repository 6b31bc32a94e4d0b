"""On-policy rounds inside fit (RolloutCB): every aggregation of PolicyGradientLoss gives the weights of
the whole round in one step under gradient accumulation 1/2/4 and under two real processes; the
reference stays frozen; the reward reaches the table; misuse is refused."""

import copy
import sys
from pathlib import Path

import pytest
import torch
from minilearn.callbacks import reset_accelerate_state
from support import torchrun
from support import SaveThenInterrupt

from minilearn import Callback, DataLoaders, Learner
from minilearn.callbacks import MetricsCB, ProgressCB, RolloutCB
from minilearn.losses import IGNORE_INDEX, PolicyGradientLoss

sys.path.insert(0, str(Path(__file__).parents[1] / "integration" / "dist"))
import rl_round  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh

SCRIPT = Path(__file__).parents[1] / "integration" / "dist" / "rl_round.py"


def assert_same(a, b, tol=1e-6):
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max().item())


@pytest.mark.parametrize("aggregation", rl_round.AGGREGATIONS)
def test_accumulation_gives_the_weights_of_the_whole_round(aggregation):
    ref, ref_rewards, _ = rl_round.run(aggregation)
    for gas in (1, 2, 4):
        reset_accelerate_state()
        got, rewards, _ = rl_round.run(aggregation, rl_round.ROLLOUTS // gas, gas, accelerate=True)
        assert_same(got, ref)
        assert rewards == pytest.approx(ref_rewards, abs=1e-6)  # the second round drew the same rollouts


def test_the_rounds_really_train_and_differ_in_length():
    start = rl_round.model(0).state_dict()
    weights, rewards, learn = rl_round.run("sequence_mean")
    assert any(not torch.equal(weights[k], start[k]) for k in start)
    lengths = (learn.dls.train.dataset.batch["target_tokens"] != IGNORE_INDEX).sum(1)
    assert len(set(lengths.tolist())) > 2  # per-token and per-sequence means differ on these rollouts


def test_per_micro_batch_means_would_not_match():
    # What the exact normalisation is for: the same loss returned as a plain mean of each micro-batch
    # gives other weights under accumulation.
    class PlainMean(PolicyGradientLoss):
        def forward(self, logits, target_tokens, logprobs, advantages, ref_logprobs=None):
            # arithmetic drops the parts: a plain scalar, averaged per micro-batch
            return super().forward(logits, target_tokens, logprobs, advantages, ref_logprobs) * 1.0

    ref, _, _ = rl_round.run("token_mean")
    original = rl_round.PolicyGradientLoss
    rl_round.PolicyGradientLoss = PlainMean
    try:
        got, _, _ = rl_round.run("token_mean", rl_round.ROLLOUTS // 4, 4, accelerate=True)
    finally:
        rl_round.PolicyGradientLoss = original
    assert max((got[k] - ref[k]).abs().max().item() for k in ref) > 1e-4


def test_two_processes_give_the_weights_of_one(tmp_path):
    results = torchrun(tmp_path / "rl.pt", script=SCRIPT, timeout=600)
    for aggregation in rl_round.AGGREGATIONS:
        ref, ref_rewards, _ = rl_round.run(aggregation)
        for gas in (1, 2):
            weights, rewards = results[f"{aggregation}/gas{gas}"]
            assert_same(weights, ref)
            assert rewards == pytest.approx(ref_rewards, abs=1e-6)


def test_the_reference_stays_frozen_and_the_reward_joins_the_table(capsys):
    policy = rl_round.model(0)
    ref = copy.deepcopy(policy)
    frozen = copy.deepcopy(ref.state_dict())
    rl = RolloutCB(rl_round.PROMPTS, rl_round.reward, group_size=4, max_new_tokens=5, eos_token_id=0, ref_model=ref)
    metrics = MetricsCB()
    # One step a round, so the first round is scored by the policy before it moved.
    learn = Learner(policy, DataLoaders(torch.utils.data.DataLoader(rl.buffer, batch_size=16), []),
                    PolicyGradientLoss("ppo", kl_coef=0.1), lr=0.05, cbs=[rl, metrics, ProgressCB()])
    learn.fit(3)
    assert all(torch.equal(v, frozen[k]) for k, v in ref.state_dict().items())
    assert all(p.grad is None for p in ref.parameters())
    train_rows = [r for r in metrics.history if r["phase"] == "train"]
    assert [r["reward"] for r in train_rows] == [h["reward"] for h in rl.history]
    assert "reward" in capsys.readouterr().out
    assert train_rows[0]["mean_kl"] == pytest.approx(0, abs=1e-6)  # the first round: policy == reference
    assert train_rows[-1]["mean_kl"] > 0
    ax = rl.plot_rewards()
    assert list(ax.lines[0].get_ydata()) == [h["reward"] for h in rl.history]
    # A second fit goes on with new rounds (the round number seeds them, not the epoch).
    learn.fit(1)
    assert len(rl.history) == 4


def rl_learner(seed=0):
    policy = rl_round.model(seed)
    rl = RolloutCB(rl_round.PROMPTS, rl_round.reward, group_size=4, max_new_tokens=5, eos_token_id=0,
                   ref_model=rl_round.model(1))
    loader = torch.utils.data.DataLoader(rl.buffer, batch_size=4, shuffle=True)
    loss = PolicyGradientLoss("ppo", kl_coef=0.5, aggregation="sequence_mean")
    return Learner(policy, DataLoaders(loader, []), loss, lr=0.05, opt_func=torch.optim.Adam), rl


@pytest.mark.parametrize("epoch, iter", [(1, 1), (1, None)], ids=["mid-round", "between-rounds"])
def test_a_resumed_fit_draws_the_rounds_of_the_uninterrupted_one(tmp_path, epoch, iter):
    torch.manual_seed(1)
    learn, rl = rl_learner()
    learn.fit(3, cbs=rl)
    expected, expected_rewards = [p.detach().clone() for p in learn.model.parameters()], [h["reward"] for h in rl.history]
    torch.manual_seed(1)
    learn, rl = rl_learner()
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3, cbs=[rl, SaveThenInterrupt(tmp_path / "ck", epoch, iter)])
    torch.manual_seed(99)  # a new process: other random states, other weights
    resumed, rl = rl_learner(seed=5)
    resumed.fit(3, cbs=rl, resume=tmp_path / "ck")
    assert all(torch.equal(p, q) for p, q in zip(expected, resumed.model.parameters()))
    assert [h["reward"] for h in rl.history] == expected_rewards


def test_rounds_draw_prompts_and_are_reproducible():
    def rounds(seed):
        policy = rl_round.model(0)
        rl = RolloutCB([[t] for t in range(1, 11)], rl_round.reward, group_size=2, max_new_tokens=3,
                       prompts_per_round=3, seed=seed)
        learn = Learner(policy, DataLoaders(torch.utils.data.DataLoader(rl.buffer, batch_size=6), []),
                        PolicyGradientLoss(), lr=0.1, cbs=rl)
        seen = []
        learn.fit(3, cbs=[SeePrompts(seen)])
        return seen

    class SeePrompts(Callback):
        order = 50

        def __init__(self, seen):
            self.seen = seen

        def before_batch(self, learn):
            self.seen.append(learn.batch["input_ids"][:, 0].tolist())

    a, b, c = rounds(0), rounds(0), rounds(1)
    assert a == b and a != c
    assert all(len(set(ids)) <= 3 for ids in a)  # 3 prompts a round, each twice


def test_misuse_is_refused_and_the_learner_stays_usable():
    policy = rl_round.model(0)
    rl = RolloutCB(rl_round.PROMPTS, rl_round.reward, group_size=2, max_new_tokens=3, ref_model=policy)
    other = [{"input_ids": torch.zeros(2, 3, dtype=torch.long), "target_tokens": torch.zeros(2, 3, dtype=torch.long),
              "logprobs": torch.zeros(2, 3), "advantages": torch.zeros(2, 3)}]
    learn = Learner(policy, DataLoaders(other, []), PolicyGradientLoss(), lr=0.1)
    with pytest.raises(ValueError, match="training loader reads another dataset"):
        learn.fit(1, cbs=rl)
    learn.dls = DataLoaders(torch.utils.data.DataLoader(rl.buffer, batch_size=4), [])
    with pytest.raises(ValueError, match="ref_model shares parameters"):
        learn.fit(1, cbs=rl)
    with pytest.raises(ValueError, match="prompts_per_round"):
        RolloutCB(rl_round.PROMPTS, rl_round.reward, group_size=2, max_new_tokens=3, prompts_per_round=9)
    with pytest.raises(RuntimeError, match="RolloutBuffer is empty"):
        learn.fit(1)  # no RolloutCB: nothing fills the buffer
    bad = RolloutCB(rl_round.PROMPTS, lambda p, c: [1.0], group_size=2, max_new_tokens=3)
    learn.dls = DataLoaders(torch.utils.data.DataLoader(bad.buffer, batch_size=4), [])
    with pytest.raises(ValueError, match=r"reward_fn .*<lambda> returned 1 rewards for 8 completions"):
        learn.fit(1, cbs=bad)
    good = RolloutCB(rl_round.PROMPTS, rl_round.reward, group_size=2, max_new_tokens=3)
    learn.dls = DataLoaders(torch.utils.data.DataLoader(good.buffer, batch_size=4), [])
    learn.fit(1, cbs=good)  # still usable
    assert len(good.history) == 1 and not any(isinstance(c, RolloutCB) for c in learn.cbs)



def none_at_3(prompts, completions):
    rewards = rl_round.reward(prompts, completions)
    rewards[3] = None
    return rewards


@pytest.mark.parametrize("reward_fn, error, match", [
    (lambda p, c: None, TypeError, r"returned None \(NoneType\) for 8 completions; expected a list or 1-d tensor of 8"),
    (none_at_3, TypeError, r"none_at_3 returned None \(NoneType\) at index 3 of its 8 rewards; expected a finite real"),
    (lambda p, c: ["1"] * len(c), TypeError, r"returned '1' \(str\) at index 0 of its 8 rewards"),
    (lambda p, c: [0.0] * 5 + [float("nan")] * 3, ValueError,
     r"returned nan \(float\) at index 5 .*would make its whole group's advantages NaN"),
    (lambda p, c: torch.ones(len(c), 1), ValueError, r"tensor of shape \(8, 1\) for 8 completions; expected .* shape \(8,\)"),
], ids=["None", "None inside", "str", "NaN", "2-d"])
def test_rewards_that_are_not_numbers_are_named_and_the_learner_trains_after(reward_fn, error, match):
    policy = rl_round.model(0)
    rl = RolloutCB(rl_round.PROMPTS[:2], reward_fn, group_size=4, max_new_tokens=3, eos_token_id=0)
    learn = Learner(policy, DataLoaders(torch.utils.data.DataLoader(rl.buffer, batch_size=4), []), PolicyGradientLoss(),
                    lr=0.1, cbs=rl)

    with pytest.raises(error, match=match) as err:
        learn.fit(1)
    assert "reward_fn" in str(err.value) and rl.history == [] and rl.state_dict()["in_round"] is False
    rl.reward_fn = rl_round.reward  # fixed: the same learner trains
    learn.fit(1)
    assert len(rl.history) == 1
