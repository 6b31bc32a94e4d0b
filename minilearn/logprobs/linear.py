"""Target log-probabilities from hidden states and the output layer, without materialising the logits.

The logits `(tokens, vocab)` dominate a language model's training memory: the forward computes them a
tile at a time, keeping each token's logsumexp, and the backward recomputes each tile (as Liger-Kernel's
fused linear cross-entropy and Apple's Cut Cross-Entropy do), in portable PyTorch.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from minilearn.logprobs.per_token import IGNORE_INDEX, MEMORY_BUDGET_ELEMENTS, slices as _slices, token_logprobs

__all__ = ["LinearLogits", "linear_token_logprobs", "linear_tile_shape"]


def linear_tile_shape(tokens: int, vocab: int, chunk_size: int | tuple[int, int] | None = None,
                      budget: int = MEMORY_BUDGET_ELEMENTS) -> tuple[int, int]:
    """How many tokens and how many vocabulary entries one tile of logits holds: `(rows, cols)`.

    - `chunk_size=None`: at most about `budget` elements: all the tokens and as much of the vocabulary
      as fits (at least 1024 entries, then fewer tokens); tall tiles read each weight slice once.
    - `chunk_size=rows`: that many tokens, and as much of the vocabulary as the budget allows.
    - `chunk_size=(rows, cols)`: both given.

    >>> linear_tile_shape(4096, 128_256)      # every token, 2048 vocabulary entries at a time
    (4096, 2048)
    >>> linear_tile_shape(100_000, 128_256)   # 8192 tokens by 1024 entries
    (8192, 1024)
    >>> linear_tile_shape(10, 7, chunk_size=(4, 3))
    (4, 3)
    """
    if isinstance(chunk_size, tuple):
        rows, cols = chunk_size
    elif chunk_size is not None:
        rows, cols = chunk_size, budget // max(chunk_size, 1)
    else:
        # Tiles narrower than 1024 slow the matrix products down: fewer tokens a tile instead.
        cols = min(max(vocab, 1), max(1024, budget // max(tokens, 1)))
        rows = budget // cols
    if not (isinstance(rows, int) and isinstance(cols, int) and rows > 0 and cols > 0):
        raise ValueError(f"chunk_size must be a positive number of tokens or a (tokens, vocabulary entries) pair "
                         f"of positive ints, got {chunk_size!r}")
    return min(rows, max(tokens, 1)), min(cols, max(vocab, 1))


def _logits(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return h @ w.T if b is None else torch.addmm(b, h, w.T)


class _LinearTargetLogprobs(torch.autograd.Function):
    """`log_softmax(hidden @ weight.T + bias)[r, targets[r, k]]` for 2-d `hidden` `(M, D)`, tile by
    tile; 0 where not `keep`. Saves the per-token logsumexp `(M,)` and nothing of size vocabulary.
    Runs in `dtype` outside autocast, which would run the matrix products in bfloat16.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, keep, tile_shape, dtype):
        rows, cols = tile_shape
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            lse = torch.full((h.shape[0],), float("-inf"), dtype=dtype, device=h.device)
            # The vocabulary is the outer loop, so a half-precision weight is upcast one slice at a time.
            for v in _slices(weight.shape[0], cols):
                w, b = weight[v].to(dtype), None if bias is None else bias[v].to(dtype)
                for r in _slices(h.shape[0], rows):
                    # In place: torch.logsumexp would allocate a second tile.
                    tile = _logits(h[r], w, b)
                    top = tile.amax(1, keepdim=True)
                    lse[r] = torch.logaddexp(lse[r], tile.sub_(top).exp_().sum(1).log_().add_(top[:, 0]))
            target_logits = torch.empty(targets.shape, dtype=dtype, device=h.device)
            for r in _slices(h.shape[0], rows):
                target_logits[r] = torch.einsum("rd,rkd->rk", h[r], weight[targets[r]].to(dtype))
            if bias is not None:
                target_logits += bias[targets].to(dtype)
        ctx.save_for_backward(hidden, weight, bias, targets, keep, lse)
        ctx.rows, ctx.cols = rows, cols
        return torch.where(keep, target_logits - lse[:, None], torch.zeros((), dtype=dtype, device=h.device))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lp):
        hidden, weight, bias, targets, keep, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype, rows, cols = lse.dtype, ctx.rows, ctx.cols
        # d lp_k / d logit_j = [j == t_k] - softmax_j; ignored targets pass no gradient.
        g = torch.where(keep, grad_lp.to(dtype), torch.zeros((), dtype=dtype, device=lse.device))
        g_sum = g.sum(1, keepdim=True)
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.empty_like(bias) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            grad_h = torch.zeros(h.shape, dtype=dtype, device=h.device) if need_h else None
            if need_h:
                for r in _slices(h.shape[0], rows):  # the [j == t_k] part: sum_k g_k weight[t_k]
                    grad_h[r] = torch.einsum("rk,rkd->rd", g[r], weight[targets[r]].to(dtype))
            for v in _slices(weight.shape[0], cols):
                w, b = weight[v].to(dtype), None if bias is None else bias[v].to(dtype)
                # Accumulated in `dtype` for this slice only, then stored in the weight's dtype.
                gw = torch.zeros(w.shape, dtype=dtype, device=w.device) if need_w else None
                gb = torch.zeros(w.shape[0], dtype=dtype, device=w.device) if need_b else None
                for r in _slices(h.shape[0], rows):  # the softmax part: -(sum_k g_k) softmax_j
                    tile = _logits(h[r], w, b).sub_(lse[r, None]).exp_().mul_(-g_sum[r])
                    if need_h:
                        grad_h[r].addmm_(tile, w)
                    if need_w:
                        gw.addmm_(tile.T, h[r])
                    if need_b:
                        gb += tile.sum(0)
                # The [j == t_k] part, for the targets that fall in this slice of the vocabulary.
                inside = keep & (targets >= v.start) & (targets < v.stop)
                local, g_inside = targets[inside] - v.start, g[inside]
                if need_w:
                    token = inside.nonzero()[:, 0]
                    grad_w[v] = gw.index_add_(0, local, g_inside[:, None] * h[token])
                if need_b:
                    grad_b[v] = gb.index_add_(0, local, g_inside)
        return None if grad_h is None else grad_h.to(hidden.dtype), grad_w, grad_b, None, None, None, None


class LinearLogits:
    """The logits `hidden @ weight.T + bias` of a linear output layer, left unmaterialised: a model
    returns it instead of logits (`minilearn.FusedHead`), and every loss takes it where it takes logits.
    `hidden` `(..., D)` (the last hidden states), `weight` `(V, D)`, `bias` `(V,)` or None;
    `materialize()` computes the real logits, at their full memory.

    >>> logits = LinearLogits(torch.zeros(2, 3, 8), torch.zeros(50, 8))
    >>> logits.shape, logits.materialize().shape
    (torch.Size([2, 3, 50]), torch.Size([2, 3, 50]))
    """

    def __init__(self, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
            if t is not None and not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"{name} must be a floating-point tensor, got {got}")
        if hidden.ndim < 1 or weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
            raise ValueError(f"hidden of shape {tuple(hidden.shape)} and weight of shape {tuple(weight.shape)} do not "
                             f"make logits: expected hidden (..., D) and weight (V, D) with the same D")
        if bias is not None and bias.shape != weight.shape[:1]:
            raise ValueError(f"bias of shape {tuple(bias.shape)} must be (V,) = {tuple(weight.shape[:1])}, "
                             f"one entry a row of weight of shape {tuple(weight.shape)}")
        devices = {t.device for t in (hidden, weight, bias) if t is not None}
        if len(devices) > 1:
            raise ValueError(f"hidden, weight and bias must be on one device, got {sorted(map(str, devices))}")
        self.hidden, self.weight, self.bias = hidden, weight, bias

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.hidden.shape[:-1], self.weight.shape[0]))

    @property
    def ndim(self) -> int:
        return self.hidden.ndim

    @property
    def dtype(self) -> torch.dtype:
        dtype = torch.promote_types(self.hidden.dtype, self.weight.dtype)
        return dtype if self.bias is None else torch.promote_types(dtype, self.bias.dtype)

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def materialize(self) -> torch.Tensor:
        """The logits, `(..., V)`, as the linear layer would compute them."""
        dtype = self.dtype
        return F.linear(self.hidden.to(dtype), self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype))

    def target_logprobs(self, targets: torch.Tensor, keep: torch.Tensor, chunk_size: int | tuple[int, int] | None
                        ) -> torch.Tensor:
        """`LazyLogits.target_logprobs` (unchecked: call `token_logprobs`), `chunk_size` as in `linear_tile_shape`."""
        hidden = self.hidden.reshape(-1, self.hidden.shape[-1])
        dtype = torch.promote_types(self.dtype, torch.float32)  # at least float32, float64 stays
        tile_shape = linear_tile_shape(hidden.shape[0], self.weight.shape[0], chunk_size)
        return _LinearTargetLogprobs.apply(hidden, self.weight, self.bias, targets, keep, tile_shape, dtype)

    def __repr__(self) -> str:
        return (f"LinearLogits(shape={tuple(self.shape)}, dtype={self.dtype}, hidden {self.hidden.dtype}, "
                f"weight {self.weight.dtype}, bias={'None' if self.bias is None else self.bias.dtype})")


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, target_tokens: torch.Tensor,
                          bias: torch.Tensor | None = None, chunk_size: int | tuple[int, int] | None = None,
                          ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Log-probabilities of the target tokens under the logits `hidden @ weight.T + bias`, never held:
    `token_logprobs(LinearLogits(hidden, weight, bias), ...)`.

    - `hidden`: `(..., D)`; `weight`: `(V, D)`; `bias`: `(V,)` or None; any floating dtypes (each
      gradient comes back in its input's dtype). `target_tokens` and the result as in `token_logprobs`.
    - `chunk_size`: tokens a tile, or `(tokens, vocabulary entries)` (see `linear_tile_shape`).

    Memory: one tile and a few numbers a token beyond inputs and gradients; time: about 4/3 of the naive one's.

    >>> hidden, weight = torch.randn(5, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    >>> targets = torch.tensor([3, 0, -100, 10, 7])
    >>> lp = linear_token_logprobs(hidden, weight, targets, chunk_size=(2, 4))
    >>> naive = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets.clamp(min=0)[:, None])[:, 0]
    >>> torch.allclose(lp, naive.masked_fill(targets == -100, 0.0), atol=1e-12, rtol=0)
    True
    """
    return token_logprobs(LinearLogits(hidden, weight, bias), target_tokens, ignore_index, chunk_size)
