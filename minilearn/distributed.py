"""Several processes: how many, gathering values of different lengths from each (pad, gather, unpad),
and Accelerate's process-wide state. In one process every gathering function returns its input."""

import atexit
import functools
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from accelerate.state import AcceleratorState, GradientState, PartialState

from minilearn.data import IGNORE_INDEX, is_per_row

__all__ = ["world_size", "rank", "launched_processes", "trains_alone", "sum_across_processes", "pad_across_processes",
           "all_gather_padded", "gather_sequences", "gather_batch", "gather_objects", "barrier", "is_main_process",
           "cat_padded", "PADDING", "pad_value", "reset_accelerate_state", "shut_down_process_group_at_exit"]

# Padding where sequences of different lengths are joined: targets with IGNORE_INDEX (nothing is predicted
# there), anything else with 0 (`input_ids` stay token ids a reference model may run on; the mask marks them).
PADDING: dict[str, int] = {"target_tokens": IGNORE_INDEX, "labels": IGNORE_INDEX}


def pad_value(key: str | None, t: torch.Tensor, padding: dict[str, float] = PADDING) -> float:
    """What pads `t`, the batch item `key` (None in a tuple batch, where an integer tensor is a target).

    >>> pad_value("target_tokens", torch.zeros(2, dtype=torch.long)), pad_value(None, torch.zeros(2, dtype=torch.long))
    (-100, -100)
    """
    if key is None:
        return 0 if t.is_floating_point() or t.dtype == torch.bool else IGNORE_INDEX
    return padding.get(key, 0)


def world_size() -> int:
    """The number of processes training together (1 without a `torch.distributed` group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a `torch.distributed` group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def launched_processes() -> int:
    """The number of processes the launcher (torchrun, `accelerate launch`) started: its `WORLD_SIZE`, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def trains_alone() -> bool:
    """True in a process that trains alone: not started as one of several, and in no process group."""
    return launched_processes() == 1 and not (dist.is_available() and dist.is_initialized())


def reset_accelerate_state(keep_process_setup: bool = False) -> None:
    """Forget Accelerate's process-wide singletons (`AcceleratorState`, `GradientState`, and unless
    `keep_process_setup` `PartialState`) in a process that trains alone. Call it before
    `accelerate.notebook_launcher` in a notebook that has trained with Accelerate: the launcher refuses
    to start processes once an `Accelerator` exists."""
    if not trains_alone():
        raise RuntimeError("reset_accelerate_state is for a process that trains alone; this one is one of several, "
                           "whose state Accelerate still needs")
    AcceleratorState._reset_state(reset_partial_state=not keep_process_setup)
    GradientState._reset_state()


@functools.cache  # once per process
def shut_down_process_group_at_exit() -> None:
    """Shut the process group down at exit (not after a fit: the next fit needs it), once its worker
    threads have let go of their last tensors: a gloo worker that does so only while the interpreter
    finalizes aborts the process (SIGABRT) at the end of a run that went well."""
    def shut_down():
        time.sleep(0.25)  # time for the worker threads to release their last collective
        PartialState().destroy_process_group()
    atexit.register(shut_down)


def is_main_process() -> bool:
    """Whether this is rank 0 of the process group or, before a group exists, of the launcher's `RANK`.

    >>> is_main_process()
    True
    """
    return (dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))) == 0


def gather_objects(obj: Any) -> list:
    """`obj` of every process, in rank order (`[obj]` in one process), sent pickled: for small values
    of plain data (a checkpoint's per-process random states).

    >>> gather_objects({"a": 1})
    [{'a': 1}]
    """
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every process gets here (nothing in one process)."""
    if world_size() > 1:
        dist.barrier()


def sum_across_processes(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over every process (a new tensor; `t` itself in one process).

    >>> sum_across_processes(torch.tensor([1.0, 2.0]))
    tensor([1., 2.])
    """
    if world_size() == 1:
        return t
    total = t.detach().clone()
    dist.all_reduce(total)
    return total


def _pad_to(t: torch.Tensor, shape: tuple[int, ...], value: float) -> torch.Tensor:
    # F.pad takes (last_left, last_right, second_last_left, ...): pad on the right of every dim.
    pads = [p for have, want in zip(reversed(t.shape), reversed(shape)) for p in (0, want - have)]
    return F.pad(t, pads, value=value) if any(pads) else t


def cat_padded(parts: list[torch.Tensor], pad_value: float = 0) -> torch.Tensor:
    """`parts` joined along dim 0, every other dim padded on the right with `pad_value` to the largest.

    >>> cat_padded([torch.ones(1, 2), torch.ones(1, 3)])
    tensor([[1., 1., 0.],
            [1., 1., 1.]])
    """
    widest = tuple(max(dims) for dims in zip(*(p.shape[1:] for p in parts)))
    return torch.cat([_pad_to(p, (p.shape[0], *widest), pad_value) for p in parts])


def _shapes(t: torch.Tensor) -> list[tuple[int, ...]]:
    # Every process's shape of `t`, in rank order.
    shape = torch.tensor(t.shape, dtype=torch.long, device=t.device)
    shapes = [torch.empty_like(shape) for _ in range(world_size())]
    dist.all_gather(shapes, shape)
    return [tuple(s.tolist()) for s in shapes]


def pad_across_processes(t: torch.Tensor, pad_value: float = 0) -> torch.Tensor:
    """`t` padded on the right, in every dim after the first, to its largest size on any process, so
    that the processes' tensors can be gathered along dim 0. Every process must call it (same ndim).

    >>> pad_across_processes(torch.ones(2, 3)).shape  # one process: its own tensor
    torch.Size([2, 3])
    """
    if world_size() == 1 or t.ndim < 2:
        return t
    widest = tuple(max(dims) for dims in zip(*_shapes(t)))
    return _pad_to(t, (t.shape[0], *widest[1:]), pad_value)


def all_gather_padded(t: torch.Tensor, pad_value: float = 0) -> list[torch.Tensor]:
    """Every process's `t`, in rank order, each with its own shape (any dims may differ, not ndim).
    Not differentiable.

    >>> all_gather_padded(torch.ones(2, 3))[0].shape  # one process: its own tensor
    torch.Size([2, 3])
    """
    if world_size() == 1:
        return [t]
    shapes = _shapes(t)
    biggest = tuple(max(dims) for dims in zip(*shapes))
    padded = [torch.empty(biggest, dtype=t.dtype, device=t.device) for _ in shapes]
    dist.all_gather(padded, _pad_to(t.detach().contiguous(), biggest, pad_value))
    return [p[tuple(slice(0, d) for d in s)] for p, s in zip(padded, shapes)]


def gather_sequences(seqs: list[torch.Tensor]) -> tuple[list[torch.Tensor], int]:
    """The sequences of every process, in rank order, and the index of this process's first one.

    `seqs`: tensors `(T_i, ...)` of one dtype. This process's entries are `seqs` themselves (graph
    kept), the others detached copies. Under several processes `seqs` must not be empty.
    """
    if world_size() == 1:
        return list(seqs), 0
    if not seqs:
        raise ValueError(f"process {rank()} has no sequences to gather; every process needs at least one")
    all_lengths = all_gather_padded(torch.tensor([s.shape[0] for s in seqs], device=seqs[0].device))
    all_flat = all_gather_padded(torch.cat([s.detach() for s in seqs]))
    gathered = [part for n, f in zip(all_lengths, all_flat) for part in torch.split(f, n.tolist())]
    start = sum(len(n) for n in all_lengths[:rank()])
    gathered[start:start + len(seqs)] = seqs
    return gathered, start


def gather_batch(batch: Mapping, n: int, padding: Mapping[str, float] = PADDING) -> dict[str, Any]:
    """The global batch: each tensor of `batch` with `n` rows (the local sequences) joined with the
    other processes' in rank order, other dims padded on the right (`padding`); lists of `n` tensors
    go through `gather_sequences`; anything else is this process's value."""
    if world_size() == 1:
        return dict(batch)
    out = {}
    for key, value in batch.items():
        if is_per_row(value, n):
            out[key] = cat_padded(all_gather_padded(value, padding.get(key, 0)), padding.get(key, 0))
        elif isinstance(value, list) and len(value) == n and all(isinstance(v, torch.Tensor) for v in value):
            out[key] = gather_sequences(value)[0]
        else:
            out[key] = value
    return out
