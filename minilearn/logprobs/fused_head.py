"""FusedHead: a language model whose forward returns its hidden states and output layer instead of
logits, so that every loss computes its log-probabilities without materialising the logits."""

from typing import Any

import torch
from torch import nn

from minilearn.logprobs.linear import LinearLogits

__all__ = ["FusedHead"]

# Hugging Face configuration fields of models that transform the logits after the output layer.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale")


def _hidden_states(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(getattr(out, "last_hidden_state", None), torch.Tensor):
        return out.last_hidden_state
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"FusedHead's body returned {type(out).__name__}; expected the last hidden states: a tensor "
                    f"(..., D), a tuple whose first item is one, or a Hugging Face output with last_hidden_state")


class FusedHead(nn.Module):
    """A language model split into `body` and output layer `head`, whose forward returns
    `LinearLogits(hidden, weight, bias)` instead of the logits `(..., V)`.

    Every loss of `minilearn.losses` takes the result where it takes logits and computes its
    log-probabilities with `linear_token_logprobs`: the `(tokens, vocab)` logits are never held,
    which is most of a large-vocabulary model's training memory. The gradients are the same.

    - `body`: the model without its output layer, returning the last hidden states `(..., D)`: a
      tensor, a tuple whose first item is one, or a Hugging Face output with `last_hidden_state`
      (a base model such as `GPT2Model`).
    - `head`: the output layer: an `nn.Linear` `(D -> V)`, or an `nn.Embedding` or weight
      `nn.Parameter` `(V, D)` for a head tied to the embedding.
    - `forward(input_ids, attention_mask=None, **kwargs)` calls `body(input_ids, attention_mask=...,
      **kwargs)` (attention_mask only when given), so a mapping batch feeds it as it feeds the model.

    The modules are shared, not copied: training the FusedHead trains the wrapped model. It returns
    `LinearLogits` in evaluation mode too, so validation losses save the same memory. Where the
    logits are needed (an argmax accuracy metric, generation), call the wrapped model itself, which
    shares the weights, or `preds.materialize()`.

    `FusedHead.from_causal_lm(model)` wraps a Hugging Face causal LM (`GPT2LMHeadModel`, ...);
    `TinyCausalLM(fused_head=True)` does the same for minilearn's own model.

    >>> body, head = nn.Embedding(50, 8), nn.Linear(8, 50)
    >>> out = FusedHead(body, head)(torch.zeros(2, 5, dtype=torch.long))
    >>> type(out).__name__, out.shape
    ('LinearLogits', torch.Size([2, 5, 50]))
    """

    def __init__(self, body: nn.Module, head: nn.Linear | nn.Embedding | nn.Parameter):
        super().__init__()
        if not isinstance(head, (nn.Linear, nn.Embedding, nn.Parameter)):
            raise TypeError(f"head must be the output layer: an nn.Linear, or an nn.Embedding or nn.Parameter of shape "
                            f"(V, D) for a tied head; got {type(head).__name__}")
        self.body, self.head = body, head

    @classmethod
    def from_causal_lm(cls, model: nn.Module) -> "FusedHead":
        """Wrap a Hugging Face causal LM: its base model (`model.base_model`, for GPT-2
        `model.transformer`) as the body, `model.get_output_embeddings()` as the head.

        Refuses models that transform the logits after the output layer (soft-capping, a logit
        scale), whose log-probabilities are not those of the linear layer.
        """
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__}.get_output_embeddings() returned None: the model has no output "
                             f"layer to fuse; pass FusedHead(body, head) yourself")
        config = getattr(model, "config", None)
        for name in _LOGIT_TRANSFORMS:
            value = getattr(config, name, None)
            if value is not None and value != 1:
                raise ValueError(f"{type(model).__name__} transforms its logits after the output layer "
                                 f"(config.{name}={value}); FusedHead computes the plain linear logits and would "
                                 f"train a different model")
        return cls(model.base_model, head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> LinearLogits:
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        hidden = _hidden_states(self.body(input_ids, **kwargs))
        if isinstance(self.head, nn.Linear):
            return LinearLogits(hidden, self.head.weight, self.head.bias)
        return LinearLogits(hidden, self.head if isinstance(self.head, nn.Parameter) else self.head.weight)
