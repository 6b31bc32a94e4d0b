"""FusedHead: a language model whose forward returns its hidden states and output layer instead of logits."""

from typing import Any

import torch
from torch import nn

from minilearn.logprobs.linear import LinearLogits

__all__ = ["FusedHead"]


class FusedHead(nn.Module):
    """A language model split into `body` and output layer `head`, whose forward returns
    `LinearLogits(hidden, weight, bias)` instead of the logits `(..., V)`: same gradients, no logits held.

    - `body`: the model without its output layer, returning the last hidden states `(..., D)`: a
      tensor, a tuple whose first item is one, or a Hugging Face output with `last_hidden_state`.
    - `head`: an `nn.Linear` `(D -> V)`, or an `nn.Embedding` or `nn.Parameter` `(V, D)` (tied head).
    - `forward(input_ids, attention_mask=None, **kwargs)` calls `body(input_ids, **kwargs)`, with
      `attention_mask` only when given. The modules are shared, not copied.

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
        """Wrap a Hugging Face causal LM: `model.base_model` as the body, `model.get_output_embeddings()`
        as the head; refuses models that transform the logits after the output layer (soft-capping)."""
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__}.get_output_embeddings() returned None: the model has no output "
                             f"layer to fuse; pass FusedHead(body, head) yourself")
        config = getattr(model, "config", None)
        # Hugging Face configuration fields of models that transform the logits after the output layer.
        for name in ("final_logit_softcapping", "logit_scale"):
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
        hidden = self.body(input_ids, **kwargs)
        if isinstance(getattr(hidden, "last_hidden_state", None), torch.Tensor):
            hidden = hidden.last_hidden_state
        elif isinstance(hidden, tuple) and hidden and isinstance(hidden[0], torch.Tensor):
            hidden = hidden[0]
        elif not isinstance(hidden, torch.Tensor):
            raise TypeError(f"FusedHead's body returned {type(hidden).__name__}; expected the last hidden states: a "
                            f"tensor (..., D), a tuple whose first item is one, or a Hugging Face output with "
                            f"last_hidden_state")
        if isinstance(self.head, nn.Linear):
            return LinearLogits(hidden, self.head.weight, self.head.bias)
        return LinearLogits(hidden, self.head if isinstance(self.head, nn.Parameter) else self.head.weight)
