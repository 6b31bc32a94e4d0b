"""RL rollouts: completions drawn from the model being trained, with the sampler's log-probabilities.

- `sample`: `group_size` completions of each prompt as a dict batch (`input_ids`, `attention_mask`,
  `target_tokens`, `logprobs`, `prompt_index`) that `PolicyGradientLoss` takes by name;
  `model_logprobs`, a model's log-probabilities of a batch's targets (the frozen reference's).
- `make_rollouts`: one round: sample, reward, group advantages, reference log-probabilities;
  `check_rewards`, what a reward function returned, checked; `RolloutBuffer`, the dataset a training
  loader reads each round from (`RolloutCB` fills it).
- `completion_tokens`, `prompt_tokens`: the token ids a reward function reads.
"""

from minilearn.sampling.rounds import RewardFn, RolloutBuffer, check_rewards, make_rollouts
from minilearn.sampling.sample import Prompts, completion_tokens, eval_mode, model_logprobs, prompt_tokens, sample

__all__ = ["sample", "model_logprobs", "make_rollouts", "check_rewards", "RolloutBuffer", "RewardFn", "completion_tokens",
           "prompt_tokens", "eval_mode", "Prompts"]
