"""TinyCausalLM: a small decoder-only transformer, enough to train on CPU in a demo or a test."""

import torch
from torch import nn

from minilearn.logprobs.linear import LinearLogits

__all__ = ["TinyCausalLM"]


class TinyCausalLM(nn.Module):
    """A GPT-style language model: token and position embeddings, `n_layers` pre-norm transformer
    blocks with causal self-attention, and a linear head tied to the token embedding.

    `forward(input_ids (B, T), attention_mask (B, T) or None)` returns logits `(B, T, vocab_size)`;
    position t sees positions <= t only, so its logits predict token t+1. With `fused_head=True`
    (an attribute too, so it can be switched for evaluation) it returns `LinearLogits` instead:
    the final hidden states and the head's weight, which every loss of `minilearn.losses` takes in
    place of the logits without materialising them (see `minilearn.FusedHead`).

    >>> model = TinyCausalLM(vocab_size=50, dim=32, n_layers=1, n_heads=2, max_len=16)
    >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
    torch.Size([2, 8, 50])
    >>> model.fused_head = True
    >>> model(torch.zeros(2, 8, dtype=torch.long))
    LinearLogits(shape=(2, 8, 50), dtype=torch.float32, hidden torch.float32, weight torch.float32, bias=None)
    """

    def __init__(self, vocab_size: int, dim: int = 128, n_layers: int = 2, n_heads: int = 4, max_len: int = 256,
                 dropout: float = 0.0, fused_head: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, n_heads, dim_feedforward=4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor only helps padded inference; it warns with norm_first layers.
        self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied: fewer parameters, better small models
        self.max_len, self.fused_head, self.n_heads = max_len, fused_head, n_heads
        # GPT-2's scale: with the default N(0, 1) a tied head starts with logits of size ~sqrt(dim),
        # a loss of ~30 nats instead of log(vocab_size), and a long first phase undoing it.
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> torch.Tensor | LinearLogits:
        B, T = input_ids.shape
        if T > self.max_len:
            raise ValueError(f"input_ids has {T} positions but the model was built with max_len={self.max_len}")
        x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
        if attention_mask is None:
            causal = nn.Transformer.generate_square_subsequent_mask(T, device=input_ids.device, dtype=x.dtype)
            hidden = self.norm(self.blocks(x, mask=causal, is_causal=True))
        else:
            hidden = self.norm(self.blocks(x, mask=self._attention_mask(attention_mask, x.dtype)))
        return LinearLogits(hidden, self.head.weight) if self.fused_head else self.head(hidden)

    def _attention_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # (B * n_heads, T, T), 0 where a query may look and -inf where not: causal, and never at padding.
        # Each position may always see itself, so a padding position at the start of a row (a left-padded
        # prompt) has something to attend to: with every key masked its softmax would be NaN, and the NaN
        # would reach real tokens through the next layer (0 weight times a NaN value is still NaN).
        T = attention_mask.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
        itself = torch.eye(T, dtype=torch.bool, device=attention_mask.device)
        allowed = causal & ((attention_mask[:, None, :] != 0) | itself)
        mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device).masked_fill(~allowed, float("-inf"))
        return mask.repeat_interleave(self.n_heads, 0)
