"""Target log-probabilities from logits, in at least float32, without a full log-softmax copy.

Computed in row chunks, each upcast on its own, so neither pass holds a float32 copy of the whole
`(tokens, vocab)` log-softmax. The logits may also be `LazyLogits`, never materialised (`LinearLogits`).
"""

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from minilearn.data import IGNORE_INDEX  # re-exported: the token losses' convention

__all__ = ["IGNORE_INDEX", "MEMORY_BUDGET_ELEMENTS", "token_logprobs", "target_logprobs", "shift_targets",
           "check_targets", "LazyLogits"]

# Float32 values a chunk (or a tile, `minilearn.logprobs.linear`) of the logits holds, about 32 MiB:
# large enough that the per-chunk overhead is noise, far below the logits of a large vocabulary.
MEMORY_BUDGET_ELEMENTS = 1 << 23


@runtime_checkable
class LazyLogits(Protocol):
    """What `token_logprobs` needs from logits it is not given as a tensor: the `shape` `(..., V)`,
    `ndim` and `dtype` the logits would have, and `target_logprobs(targets, keep, chunk_size)`: for
    `(M, K)` ids and bool `keep`, their `(M, K)` log-probabilities (at least float32), 0 where not `keep`.
    """

    shape: torch.Size
    ndim: int
    dtype: torch.dtype

    def target_logprobs(self, targets: torch.Tensor, keep: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
        """Log-probabilities `(M, K)` of the targets, 0 where not `keep`."""


def shape_or_type(x: object) -> tuple | str:
    # What an error message shows of an argument: its shape, or the type it has instead of a tensor.
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def check_targets(logits: torch.Tensor | LazyLogits, target_tokens: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                  name: str = "target_tokens") -> None:
    """Raise a clear error when `target_tokens` (`logits.shape[:-1]`, or with a last K dimension) cannot
    index `logits` `(..., V)`, named `name`; checked here, as a GPU `gather` would only assert.

    >>> check_targets(torch.zeros(2, 5), torch.tensor([4, -100]))
    >>> check_targets(torch.zeros(2, 5), torch.tensor([5, 0]))
    Traceback (most recent call last):
    ...
    ValueError: target_tokens holds the id 5, outside [0, 5) where 5 = logits.shape[-1] is the vocabulary size (only ignore_index=-100 may lie outside); target_tokens shape (2,), logits shape (2, 5)
    """
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() or isinstance(logits, LazyLogits)):
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor (or LazyLogits, such as LinearLogits), got {got}")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a last (vocabulary) dimension of size >= 1, got shape {tuple(logits.shape)}")
    if not isinstance(target_tokens, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of integer token ids, got {type(target_tokens).__name__}")
    shapes = f"{name} shape {tuple(target_tokens.shape)}, logits shape {tuple(logits.shape)}"
    if target_tokens.is_floating_point() or target_tokens.is_complex() or target_tokens.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {target_tokens.dtype}; {shapes}")
    lead, shape = tuple(logits.shape[:-1]), tuple(target_tokens.shape)
    if shape != lead and not (len(shape) == len(lead) + 1 and shape[:-1] == lead and shape[-1] >= 1):
        raise ValueError(f"{name} of shape {shape} does not line up with logits of shape {tuple(logits.shape)}: "
                         f"expected {name} of shape {lead} (one target a position) or {lead + ('K',)} "
                         f"(K >= 1 candidate targets a position)")
    vocab = logits.shape[-1]
    bad = (target_tokens != ignore_index) & ((target_tokens < 0) | (target_tokens >= vocab))
    if bad.any():
        first = target_tokens[bad][0].item()
        raise ValueError(f"{name} holds the id {first}, outside [0, {vocab}) where {vocab} = logits.shape[-1] is "
                         f"the vocabulary size (only ignore_index={ignore_index} may lie outside); {shapes}")


def slices(length: int, step: int) -> Iterator[slice]:
    return (slice(start, min(start + step, length)) for start in range(0, length, step))


class _ChunkedTargetLogprobs(torch.autograd.Function):
    """`log_softmax(logits[r])[t[r, k]]` for the rows `r` of a 2-d `logits`, a chunk at a time; 0
    where not `keep`. By hand because autograd would save each chunk's float32 log-softmax, adding up
    to the full copy this avoids; a fused `log_softmax` then `gather` is about twice as fast as `logsumexp`.
    """

    @staticmethod
    def forward(ctx, logits, targets, keep, chunk_rows, dtype):
        ctx.step = max(1, chunk_rows or MEMORY_BUDGET_ELEMENTS // max(logits.shape[1], 1))
        lp = torch.empty(targets.shape, dtype=dtype, device=logits.device)
        for rows in slices(logits.shape[0], ctx.step):
            lp[rows] = torch.log_softmax(logits[rows].to(dtype), -1).gather(1, targets[rows])
        ctx.save_for_backward(logits, targets, keep)
        ctx.dtype = dtype
        return torch.where(keep, lp, torch.zeros((), dtype=dtype, device=lp.device))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lp):
        logits, targets, keep = ctx.saved_tensors
        # d lp_k / d logits_j = [j == t_k] - softmax_j; ignored positions pass no gradient.
        g = torch.where(keep, grad_lp, torch.zeros((), dtype=grad_lp.dtype, device=grad_lp.device))
        g_sum = g.sum(1, keepdim=True)
        grad = torch.empty_like(logits)
        for rows in slices(logits.shape[0], ctx.step):
            part = torch.log_softmax(logits[rows].to(ctx.dtype), -1).exp_().mul_(-g_sum[rows])
            grad[rows] = part.scatter_add_(1, targets[rows], g[rows])
        return grad, None, None, None, None


def token_logprobs(logits: torch.Tensor | LazyLogits, target_tokens: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                   chunk_rows: int | None = None) -> torch.Tensor:
    """Log-probabilities `log softmax(logits)[target]` of the target tokens, in at least float32.

    - `logits`: `(..., V)`, any floating dtype, or `LazyLogits` (such as `LinearLogits`).
    - `target_tokens`: integer, `(...)` or `(..., K)` (K candidates a position, as in top-K distillation),
      the result's shape; `ignore_index` gives 0 and no gradient; bad targets raise (`check_targets`).
    - `chunk_rows`: rows of `logits` normalised at a time (default: about 8M elements a chunk).

    >>> logits = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    >>> token_logprobs(logits, torch.tensor([1, -100]))   # log(1/2), and 0 at the ignored position
    tensor([-0.6931,  0.0000])
    >>> token_logprobs(logits.bfloat16(), torch.tensor([[0, 1], [0, 1]])).dtype
    torch.float32
    """
    check_targets(logits, target_tokens, ignore_index)
    return target_logprobs(logits, target_tokens, ignore_index, chunk_rows)


def target_logprobs(logits: torch.Tensor | LazyLogits, target_tokens: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                    chunk_rows: int | None = None) -> torch.Tensor:
    """`token_logprobs` without its checks of the targets, for a caller that has checked or built them.

    >>> target_logprobs(torch.zeros(1, 4), torch.tensor([2]))
    tensor([-1.3863])
    """
    targets = target_tokens if target_tokens.ndim == logits.ndim else target_tokens.unsqueeze(-1)
    targets = targets.reshape(-1, targets.shape[-1])
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros((), dtype=targets.dtype, device=targets.device)).long()
    if isinstance(logits, torch.Tensor):
        dtype = torch.float32 if logits.element_size() < 4 else logits.dtype
        lp = _ChunkedTargetLogprobs.apply(logits.reshape(-1, logits.shape[-1]), safe, keep, chunk_rows, dtype)
    else:
        lp = logits.target_logprobs(safe, keep, chunk_rows)
    return lp.reshape(target_tokens.shape)


def shift_targets(input_ids: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token targets for a causal LM: `input_ids` `(..., T)` moved one step left, with
    `ignore_index` at the end; the same shape, so the logits `(..., T, V)` need no slicing (a copy).

    >>> shift_targets(torch.tensor([[5, 6, 7]]))
    tensor([[   6,    7, -100]])
    """
    out = torch.full_like(input_ids, ignore_index)
    out[..., :-1] = input_ids[..., 1:]
    return out
