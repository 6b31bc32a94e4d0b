"""A tiny classification Learner that trains in milliseconds: the default testbed of `check_callback`."""

import torch
import torch.nn.functional as F
from torch import nn

from minilearn.callback import Callback
from minilearn.data import DataLoaders
from minilearn.learner import Learner

__all__ = ["tiny_learner"]


def tiny_learner(cbs: Callback | list[Callback] | None = None, n_train_batches: int = 2, seed: int = 0) -> Learner:
    """A Learner for 3-class classification of 4 features: `nn.Sequential(Linear(4, 8), ReLU,
    Linear(8, 3))`, `F.cross_entropy`, SGD at lr 0.1, `n_train_batches` training batches and one
    validation batch, each a tuple `(x (4, 4), y (4,))`. The same `seed` gives the same learner;
    building it leaves torch's global random state alone.

    >>> learn = tiny_learner()
    >>> learn.fit(1)
    >>> len(learn.dls.train), learn.loss.shape
    (2, torch.Size([]))
    """
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(4, 4, generator=g), torch.randint(0, 3, (4,), generator=g))
               for _ in range(n_train_batches + 1)]
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's random state is left alone
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return Learner(model, DataLoaders(batches[:-1], batches[-1:]), F.cross_entropy, lr=0.1, cbs=cbs)
