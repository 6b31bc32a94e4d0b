"""Rounds of on-policy RL (RolloutCB, a clipped loss with a KL term) for each aggregation of
PolicyGradientLoss; run by tests/callbacks/test_rollouts.py in one process and, with torchrun, in two.

`run(aggregation, bs, gas, accelerate)` trains two rounds from the same start and returns the final
weights and the rewards of each round. Every process draws the same rollouts (RolloutCB seeds its
generators by round); Accelerate gives each process its share of them. Under torchrun the main
process saves `{f"{aggregation}/gas{gas}": (weights, rewards)}` to OUT.
Usage: torchrun --standalone --nproc_per_node 2 rl_round.py OUT
"""

import argparse
import os

import torch
from torch.utils.data import DataLoader

from minilearn import DataLoaders, Learner
from minilearn.callbacks import AccelerateCB, MetricsCB, RolloutCB
from minilearn.demo import TinyCausalLM
from minilearn.losses import PolicyGradientLoss

VOCAB, EOS, MAX_NEW = 11, 0, 5
PROMPTS = [[1, 2], [3, 4, 5], [6], [7, 8]]
GROUP = 4
ROLLOUTS = len(PROMPTS) * GROUP  # one optimizer step a round: the global batch is the whole round
AGGREGATIONS = ("token_sum", "token_mean", "sequence_mean", "constant")


def reward(prompts, completions):
    """Completions that repeat the prompt's first token, the more often the better; eos early or late
    gives completions of different lengths, so per-token and per-sequence means really differ."""
    return [sum(t == p[0] for t in c) / MAX_NEW + 0.1 * len(c) for p, c in zip(prompts, completions)]


def model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return TinyCausalLM(VOCAB, dim=16, n_layers=1, n_heads=2, max_len=8)


def run(aggregation: str, bs: int = ROLLOUTS, gas: int = 1, accelerate: bool = False, rounds: int = 2):
    policy = model(0)
    rl = RolloutCB(PROMPTS, reward, group_size=GROUP, max_new_tokens=MAX_NEW, eos_token_id=EOS, ref_model=model(1))
    loss = PolicyGradientLoss("ppo", kl_coef=0.5, aggregation=aggregation,
                              max_tokens=MAX_NEW if aggregation == "constant" else None)
    cbs = [rl, MetricsCB()] + ([AccelerateCB(gradient_accumulation_steps=gas)] if accelerate else [])
    learn = Learner(policy, DataLoaders(DataLoader(rl.buffer, batch_size=bs), []), loss, lr=0.05, cbs=cbs)
    learn.fit(rounds)
    weights = {k: v.detach().clone() for k, v in learn.unwrapped_model.state_dict().items()}
    return weights, [h["reward"] for h in rl.history], learn


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    args = p.parse_args()
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for aggregation in AGGREGATIONS:
        for gas in (1, 2):
            weights, rewards, _ = run(aggregation, ROLLOUTS // (processes * gas), gas, accelerate=True)
            results[f"{aggregation}/gas{gas}"] = (weights, rewards)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, args.out)


if __name__ == "__main__":
    main()
