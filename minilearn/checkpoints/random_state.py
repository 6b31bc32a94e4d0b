"""The random number generators that decide a training run, read and set as plain data.

A run is reproduced bit for bit only if every generator it draws from starts where it was: torch's
(CPU and each CUDA device), Python's `random`, numpy's global one (when installed), and those a
`DataLoader` shuffles with. The states are tensors, numbers and tuples: a checkpoint keeps them
without pickling. A forward pass draws (dropout masks) only from torch's CPU generator and its
device's: `forward_random_state` reads those.
"""

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

try:
    import numpy as np
except ImportError:  # numpy is optional: without it there is no numpy generator to keep
    np = None

__all__ = ["loader_generators", "random_states", "set_random_states", "forward_random_state",
           "set_forward_random_state", "forward_random_state_kept"]


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The `torch.Generator`s a data loader draws its order from (each once): its own `generator` (or
    `synchronized_generator`, Accelerate's) and its samplers', through `sampler` and `batch_sampler`
    however deeply nested; none for a plain list of batches.

    >>> from torch.utils.data import DataLoader
    >>> g = torch.Generator()
    >>> loader_generators(DataLoader(range(4), shuffle=True, generator=g)) == [g]
    True
    >>> loader_generators([1, 2])
    []
    """
    found: list[torch.Generator] = []
    owners, seen = [loader], set()
    while owners:
        owner = owners.pop(0)
        if owner is None or id(owner) in seen:
            continue
        seen.add(id(owner))
        for name in ("generator", "synchronized_generator"):
            g = getattr(owner, name, None)
            if isinstance(g, torch.Generator) and all(g is not f for f in found):
                found.append(g)
        owners += [getattr(owner, "sampler", None), getattr(owner, "batch_sampler", None)]
    return found


def random_states(loader: Any = None) -> dict:
    """The state of every generator that can change a run, and of `loader`'s own generators.

    >>> s = random_states(); a = torch.rand(1); set_random_states(s); bool(torch.rand(1) == a)
    True
    """
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "loader": [g.get_state() for g in loader_generators(loader)]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        states["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                           "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return states


def set_random_states(states: dict, loader: Any = None) -> None:
    """Put every generator back where `random_states` found it. The states of CUDA or numpy are
    skipped where they are not available (a checkpoint from a GPU machine loads on a CPU one)."""
    generators = loader_generators(loader)
    if len(generators) != len(states["loader"]):
        raise ValueError(f"the saved states hold {len(states['loader'])} data-loader generator(s) but the "
                         f"training loader has {len(generators)}: build the loader as it was when they were saved "
                         f"(DataLoader(..., generator=...) or not)")
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    for g, state in zip(generators, states["loader"]):
        g.set_state(state)
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states and np is not None:
        n = states["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def forward_random_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The state of the generators a forward pass on `device` draws from: torch's CPU generator and,
    on a CUDA device, that device's own (None elsewhere). Set back before a second forward of the
    same rows (two-pass losses), it draws the same dropout masks.

    >>> s = forward_random_state(torch.device("cpu")); a = torch.rand(1)
    >>> set_forward_random_state(s, torch.device("cpu")); bool(torch.rand(1) == a)
    True
    """
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_forward_random_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    """Put the generators `forward_random_state(device)` read back where they were."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


@contextmanager
def forward_random_state_kept(device: torch.device) -> Iterator[None]:
    """Leave the generators of a forward pass on `device` where they were before the block: a pass
    that replays earlier states does not change what the program draws next."""
    state = forward_random_state(device)
    try:
        yield
    finally:
        set_forward_random_state(state, device)
