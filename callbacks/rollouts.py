"""RolloutCB: on-policy RL inside `fit`, one epoch a round: sample, score, train on what was sampled."""

import time

import torch
from torch import nn

from minilearn.callback import Callback
from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.losses.advantages import AdvantageScale
from minilearn.order import Order
from minilearn.sampling.rounds import RewardFn, RolloutBuffer, make_rollouts
from minilearn.sampling.sample import Prompts, prompt_tokens

__all__ = ["RolloutCB"]


class RolloutCB(Callback):
    """At the start of each training epoch, draw a fresh round of rollouts from the model being trained
    and put them in `buffer`, the dataset the training loader reads: the epoch's optimizer steps then
    go over completions of the current policy (one epoch = one round of GRPO-style RL).

    Each round takes `prompts_per_round` of `prompts` at random (all of them, in order, when None) and
    makes its rollouts with `minilearn.sampling.make_rollouts` (the other arguments are its own).

    Build the training loader on `buffer` (`len(buffer)` is `prompts_per_round * group_size`):

    >>> # rl = RolloutCB(prompts, reward_fn, group_size=8, max_new_tokens=4, eos_token_id=eos, ref_model=ref)
    >>> # dls = DataLoaders(DataLoader(rl.buffer, batch_size=32, shuffle=True), [])
    >>> # learn = Learner(policy, dls, PolicyGradientLoss("ppo", kl_coef=0.05, aggregation="sequence_mean"),
    >>> #                 cbs=[rl, MetricsCB(), ProgressCB()])

    The round is drawn from `learn.unwrapped_model` with generators seeded by `seed` and the round's
    number, so every process draws the same rollouts (its loader takes its share) and a repeated run
    the same rounds. `history` holds a row a round (`epoch`, `reward`, `reward_std`, the mean
    `completion_tokens`, the sampling `seconds`); the mean `reward` joins the epoch's row of the
    progress table. Checkpoints keep the rounds (and a round in progress) for `fit(resume=...)`.
    """

    # Samples at before_epoch (any order would do: the loader starts after before_epoch); at after_epoch,
    # adds the reward to the row MetricsCB just wrote, before ProgressCB prints it and loggers keep it.
    order = Order.ROLLOUTS

    def __init__(self, prompts: Prompts, reward_fn: RewardFn, group_size: int, max_new_tokens: int,
                 prompts_per_round: int | None = None, temperature: float = 1.0, top_k: int | None = None,
                 eos_token_id: int | None = None, ref_model: nn.Module | None = None,
                 advantage_scale: AdvantageScale = "std", seed: int = 0):
        self.prompts = prompt_tokens(prompts)
        self.prompts_per_round = len(self.prompts) if prompts_per_round is None else prompts_per_round
        if not 1 <= self.prompts_per_round <= len(self.prompts):
            raise ValueError(f"prompts_per_round must be between 1 and the {len(self.prompts)} prompts, got "
                             f"{prompts_per_round!r}")
        self.reward_fn, self.group_size, self.max_new_tokens = reward_fn, group_size, max_new_tokens
        self.temperature, self.top_k, self.eos_token_id = temperature, top_k, eos_token_id
        self.ref_model, self.advantage_scale, self.seed = ref_model, advantage_scale, seed
        self.buffer = RolloutBuffer(self.prompts_per_round * group_size)
        self.history: list[dict] = []
        # True from a round's sampling to the end of its training pass: a checkpoint saved in between
        # resumes that round on the same rollouts instead of drawing a new one.
        self._in_round = self._keep_round = False

    def before_fit(self, learn):
        if getattr(learn.dls.train, "dataset", None) is not self.buffer:
            raise ValueError("RolloutCB fills its buffer each round, but the training loader reads another dataset: "
                             "build it on the buffer, DataLoaders(DataLoader(cb.buffer, batch_size=...), valid)")
        policy = set(map(id, learn.unwrapped_model.parameters()))
        if self.ref_model is not None and any(id(p) in policy for p in self.ref_model.parameters()):
            raise ValueError("ref_model shares parameters with the model being trained; the reference must stay "
                             "frozen: pass a copy made before training (copy.deepcopy(model))")

    def before_epoch(self, learn):
        if not learn.training:
            return
        if self._keep_round:  # resumed in the middle of a round: go on with its rollouts
            self._keep_round, self._in_round = False, True
            return
        start = time.perf_counter()
        seed = self.seed * 1_000_003 + len(self.history)  # the round's number: fits called again draw new rounds
        chooser = torch.Generator().manual_seed(seed)
        chosen = (torch.randperm(len(self.prompts), generator=chooser)[:self.prompts_per_round].tolist()
                  if self.prompts_per_round < len(self.prompts) else range(len(self.prompts)))
        model = learn.unwrapped_model
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        batch = make_rollouts(model, [self.prompts[i] for i in chosen], self.reward_fn, self.group_size,
                              self.max_new_tokens, self.temperature, self.top_k, self.eos_token_id, generator,
                              self.ref_model, self.advantage_scale)
        self.buffer.fill(batch)
        self._in_round = True  # only now: a round that failed (a bad reward) leaves no round for a checkpoint to keep
        rewards = batch["rewards"].double()
        spread = rewards.reshape(-1, self.group_size).std(1).mean().item() if self.group_size > 1 else 0.0
        tokens = (batch["target_tokens"] != IGNORE_INDEX).sum(1).double().mean().item()
        self.history.append({"epoch": learn.epoch, "reward": rewards.mean().item(), "reward_std": spread,
                             "completion_tokens": tokens, "seconds": time.perf_counter() - start})

    def after_epoch(self, learn):
        row = learn.epoch_metrics
        if learn.training:
            self._in_round = False
            if row is not None and row.get("phase") == "train" and self.history:
                row["reward"] = self.history[-1]["reward"]

    def state_dict(self) -> dict:
        """The rounds so far and, mid-round, its rollouts: `fit(resume=...)` draws the rounds the
        uninterrupted fit would have drawn."""
        return {"history": self.history, "in_round": self._in_round,
                "rollouts": self.buffer.batch if self._in_round else None}

    def load_state_dict(self, state: dict) -> None:
        """Take back what `state_dict` gave."""
        self.history, self._keep_round = list(state["history"]), state["in_round"]
        if state["in_round"]:
            self.buffer.fill(state["rollouts"])

    def plot_rewards(self, ax=None):
        """Plot the mean reward of each round (with its within-group spread); returns the axes."""
        import matplotlib.pyplot as plt
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        rounds, mean = range(len(self.history)), [h["reward"] for h in self.history]
        spread = [h["reward_std"] for h in self.history]
        ax.plot(rounds, mean, "o-", label="mean reward")
        ax.fill_between(rounds, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)],
                        alpha=0.2, label="within-group std")
        ax.set(xlabel="round (training epoch)", ylabel="reward")
        ax.legend()
        return ax
