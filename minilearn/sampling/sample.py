"""Drawing completions from a causal language model, with the sampler's log-probabilities, as a batch
the policy-gradient losses take by name."""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from minilearn.inputs import model_call, model_inputs, select_output
from minilearn.logprobs.linear import LinearLogits
from minilearn.logprobs.per_token import IGNORE_INDEX, token_logprobs

__all__ = ["sample", "model_logprobs", "completion_tokens", "prompt_tokens", "eval_mode", "Prompts"]

# A list of prompts (each a list or 1-D tensor of token ids), a 2-D tensor of equal-length prompts, or a
# tokenizer's output: a mapping with `input_ids` and (for padded prompts) `attention_mask`.
Prompts = Sequence[Sequence[int] | torch.Tensor] | torch.Tensor | Mapping[str, torch.Tensor]
"""Prompts as `sample` takes them: lists of token ids, a `(B, T)` tensor, or a batch with `input_ids` and `attention_mask`."""


def prompt_tokens(prompts: Prompts) -> list[list[int]]:
    """The token ids of each prompt, padding removed: what `sample` reads its `prompts` as.

    >>> prompt_tokens([[5, 6], torch.tensor([7])])
    [[5, 6], [7]]
    >>> prompt_tokens({"input_ids": torch.tensor([[0, 5], [6, 7]]), "attention_mask": torch.tensor([[0, 1], [1, 1]])})
    [[5], [6, 7]]
    """
    if isinstance(prompts, Mapping):
        ids = prompts["input_ids"]
        mask = prompts.get("attention_mask", torch.ones_like(ids))
        rows = [row[keep.bool()].tolist() for row, keep in zip(ids, mask)]
    elif isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2:
            raise ValueError(f"prompts given as a tensor must be (n_prompts, length), got shape {tuple(prompts.shape)}")
        rows = prompts.tolist()
    else:
        rows = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in prompts]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError(f"sample needs at least one prompt and every prompt at least one token; got {len(rows)} "
                         f"prompt(s) of lengths {[len(r) for r in rows][:8]}")
    return rows


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for a `with` block, then every module's own mode back (a frozen part stays eval).

    >>> lm = nn.Sequential(nn.Dropout(), nn.Dropout()); _ = lm[1].eval()
    >>> with eval_mode(lm): print(lm.training, torch.is_grad_enabled())
    False False
    >>> lm.training, lm[1].training
    (True, False)
    """
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was_training in zip(model.modules(), modes):
            m.training = was_training


def _logits(out: Any) -> torch.Tensor | LinearLogits:
    # The logits (B, T, V) of a causal LM's output, found as the loss finds them, or a tuple's first item.
    logits = select_output(out, "logits")
    if isinstance(logits, tuple) and logits:
        logits = logits[0]
    if not isinstance(logits, (torch.Tensor, LinearLogits)) or logits.ndim != 3:
        shape = f" with shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else ""
        raise TypeError(f"sample needs a causal LM returning logits (B, T, V), an output with .logits, or LinearLogits; "
                        f"got {type(out).__name__}{shape}")
    return logits


def _draw(out: Any, temperature: float, top_k: int | None,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    # One token a row from the last position's logits (B, V), and its log-probability under the
    # distribution it was drawn from; of a FusedHead's output only that position is computed.
    logits = _logits(out)
    logits = (LinearLogits(logits.hidden[:, -1], logits.weight, logits.bias).materialize()
              if isinstance(logits, LinearLogits) else logits[:, -1])
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature == 0:  # greedy: no distribution was sampled, so report the model's own log-probability
        logp, token = F.log_softmax(logits, -1), logits.argmax(-1)
    else:
        scaled = logits / temperature
        if top_k is not None and top_k < scaled.shape[-1]:
            scaled = scaled.masked_fill(scaled < scaled.topk(top_k, dim=-1).values[:, -1:], float("-inf"))
        logp = F.log_softmax(scaled, -1)
        device = generator.device if generator is not None else logp.device
        token = torch.multinomial(logp.exp().to(device), 1, generator=generator)[:, 0].to(logp.device)
    return token, logp.gather(-1, token[:, None])[:, 0]


def sample(model: nn.Module, prompts: Prompts, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, eos_token_id: int | None = None, group_size: int = 1,
           generator: torch.Generator | None = None, pad_token_id: int | None = None) -> dict[str, torch.Tensor]:
    """Draw `group_size` completions of each prompt from the causal LM `model`, with the log-probability
    the sampler gave each drawn token: the rollouts of RL post-training, as a batch for the losses.

    `model`'s `forward(input_ids, attention_mask)` returns logits `(B, T, V)`, a Hugging Face output
    with `.logits` (its KV cache is then used) or `LinearLogits` (a `FusedHead`). `prompts` are read
    by `prompt_tokens` and left-padded, so every completion starts in the same column. The logits are
    divided by `temperature` (0: greedy) and `top_k` keeps the k most likely; a sequence stops after
    drawing `eos_token_id`; `generator` makes the draws reproducible; `pad_token_id` (default
    `eos_token_id`, else 0) fills what is masked out. Runs under `eval_mode`.

    Returns, with `B = len(prompts) * group_size` rows (prompt i's group consecutive from row
    `i*group_size`) and `T` the longest prompt plus the tokens drawn:

    - `input_ids` `(B, T)`, `attention_mask` `(B, T)` (0 on padding);
    - `target_tokens` `(B, T)`: at position t the drawn token at t+1 (the position whose logits
      predict it), `IGNORE_INDEX` on the prompt and padding;
    - `logprobs` `(B, T)`: the sampler's log-probability of that token, under the temperature and top_k
      used (the model's own at temperature 1), 0 where ignored;
    - `prompt_index` `(B,)`: which prompt each row completes.

    >>> from minilearn.demo.tiny_model import TinyCausalLM
    >>> lm = TinyCausalLM(vocab_size=12, dim=16, n_layers=1, n_heads=2, max_len=16)
    >>> out = sample(lm, [[1, 2, 3], [4]], max_new_tokens=4, group_size=2, generator=torch.Generator().manual_seed(0))
    >>> out["input_ids"].shape, out["prompt_index"].tolist()
    (torch.Size([4, 7]), [0, 0, 1, 1])
    >>> (out["target_tokens"][0] != -100).tolist()
    [False, False, True, True, True, True, False]
    """
    rows = prompt_tokens(prompts)
    for name, value in (("max_new_tokens", max_new_tokens), ("group_size", group_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"expected temperature >= 0 and top_k None or >= 1, got temperature={temperature}, "
                         f"top_k={top_k}")
    pad = pad_token_id if pad_token_id is not None else eos_token_id if eos_token_id is not None else 0
    device = next(model.parameters()).device
    width = max(map(len, rows))
    grouped = [r for r in rows for _ in range(group_size)]
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in grouped], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in grouped], device=device)
    names = model_inputs(model)
    # Hugging Face causal LMs take and return their KV cache, as `cache` (transformers 5) or
    # `past_key_values` (earlier); other models are run on the whole sequence every step.
    cache = next((n for n in ("cache", "past_key_values") if n in names), None) if "use_cache" in names else None
    live = torch.ones(ids.shape[0], dtype=torch.bool, device=device)  # rows that have not drawn eos yet
    drawn, drawn_lp, drawn_live, past = [], [], [], None
    with eval_mode(model):
        for _ in range(max_new_tokens):
            if cache:  # only the new token goes in; the keys and values of the others are in `past`
                step_ids = ids if past is None else ids[:, -1:]
                out = model(input_ids=step_ids, attention_mask=mask, use_cache=True, **{cache: past})
                past = out[cache]
            else:
                out = model_call(model, {"input_ids": ids, "attention_mask": mask}, 1, names)
            token, lp = _draw(out, temperature, top_k, generator)
            token = torch.where(live, token, torch.full_like(token, pad))
            drawn.append(token), drawn_lp.append(torch.where(live, lp, torch.zeros_like(lp))), drawn_live.append(live)
            ids, mask = torch.cat([ids, token[:, None]], 1), torch.cat([mask, live[:, None].to(mask.dtype)], 1)
            if eos_token_id is not None:
                live = live & (token != eos_token_id)
            if not live.any():
                break
    cols = slice(width - 1, width - 1 + len(drawn))
    target_tokens = torch.full_like(ids, IGNORE_INDEX)
    target_tokens[:, cols] = torch.where(torch.stack(drawn_live, 1), torch.stack(drawn, 1), IGNORE_INDEX)
    logprobs = torch.zeros(ids.shape, dtype=drawn_lp[0].dtype, device=device)
    logprobs[:, cols] = torch.stack(drawn_lp, 1)
    prompt_index = torch.arange(len(rows), device=device).repeat_interleave(group_size)
    return {"input_ids": ids, "attention_mask": mask, "target_tokens": target_tokens, "logprobs": logprobs,
            "prompt_index": prompt_index}


def model_logprobs(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """`(B, T)`: `model`'s log-probabilities of the batch's `target_tokens` (0 where ignored), from one
    forward pass over its `input_ids` and `attention_mask` in eval mode under no_grad, modes put back:
    a frozen reference model's `ref_logprobs`, or the policy's own to compare with the sampler's.

    >>> from minilearn.demo.tiny_model import TinyCausalLM
    >>> lm = TinyCausalLM(vocab_size=12, dim=16, n_layers=1, n_heads=2, max_len=16)
    >>> out = sample(lm, [[1, 2]], max_new_tokens=3, generator=torch.Generator().manual_seed(0))
    >>> torch.allclose(model_logprobs(lm, out), out["logprobs"], atol=1e-6)
    True
    """
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if k in batch}
    targets = batch["target_tokens"].to(device)
    with eval_mode(model):
        lp = token_logprobs(_logits(model_call(model, inputs, 1, model_inputs(model))), targets)
    return torch.where(targets != IGNORE_INDEX, lp, torch.zeros_like(lp))


def completion_tokens(batch: Mapping[str, torch.Tensor], eos_token_id: int | None = None) -> list[list[int]]:
    """The drawn tokens of each row of a `sample` batch (its counted `target_tokens`), without the
    final `eos_token_id` when one is given: what a reward function reads.

    >>> completion_tokens({"target_tokens": torch.tensor([[-100, 7, 2, -100], [-100, 8, -100, -100]])}, eos_token_id=2)
    [[7], [8]]
    """
    rows = [row[row != IGNORE_INDEX].tolist() for row in batch["target_tokens"]]
    return [t[:-1] if eos_token_id is not None and t and t[-1] == eos_token_id else t for t in rows]
