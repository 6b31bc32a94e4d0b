"""The loop does no per-batch work that does not change per batch.

A timing cannot show this on a shared machine, so these tests count: the calls, during a fit, to
the functions that cost the most when they run every batch (a file-system search for a package,
reading a signature, unwrapping a model). A fit of 2N batches must make exactly as many as a fit of N.
"""

import importlib.util
import inspect
import sys
from collections import Counter
from contextlib import contextmanager

import accelerate.utils
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import DataLoaders, Learner
from minilearn.callbacks import AccelerateCB, AccelerateCustomCB, LossCB, MetricsCB, ProgressCB
from minilearn.losses import WeightedCrossEntropy

WATCHED = {"find_spec": importlib.util.find_spec, "signature": inspect.signature,
           "extract_model_from_parallel": accelerate.utils.extract_model_from_parallel}


@contextmanager
def counted_calls(monkeypatch):
    """Count the calls to each WATCHED function, under every name a loaded module holds it by (a
    `from x import f` copies the function into the importing module, so patching `x.f` alone would miss it)."""
    counts = Counter()

    def counting(name, f):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return f(*args, **kwargs)
        return wrapper

    with monkeypatch.context() as m:
        for name, f in WATCHED.items():
            wrapper = counting(name, f)
            for module in list(sys.modules.values()):
                for attr, value in list(getattr(module, "__dict__", {}).items()):
                    if value is f:
                        m.setattr(module, attr, wrapper)
        yield counts


class Tokens(nn.Module):
    """A tiny language model that takes a mapping batch by name, like a Hugging Face model."""

    def __init__(self, vocab=11, dim=8):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.emb(input_ids))


def tuple_data(n_batches, bs=4):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n_batches * bs, 3, generator=g), torch.randn(n_batches * bs, 1, generator=g))
    return DataLoaders(DataLoader(ds, batch_size=bs), DataLoader(ds, batch_size=bs))


def dict_data(n_batches, bs=2, length=5):
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "target_tokens": ids}
            for ids in torch.randint(0, 11, (n_batches * bs, length), generator=g)]
    return DataLoaders(DataLoader(rows, batch_size=bs), DataLoader(rows, batch_size=bs))


# What a user runs: the plain loop, the metrics and progress table, a dict batch with a plug-in loss,
# Accelerate in one process with either kind of loss.
SETUPS = {
    "TrainCB": lambda n: (nn.Linear(3, 1), tuple_data(n), F.mse_loss, []),
    "MetricsCB+ProgressCB": lambda n: (nn.Linear(3, 1), tuple_data(n), F.mse_loss, [MetricsCB(), ProgressCB()]),
    "dict batch, LossCB": lambda n: (Tokens(), dict_data(n), None, [LossCB(WeightedCrossEntropy()), MetricsCB()]),
    "AccelerateCB": lambda n: (nn.Linear(3, 1), tuple_data(n), F.mse_loss, [AccelerateCB(), MetricsCB()]),
    "AccelerateCustomCB": lambda n: (Tokens(), dict_data(n), None,
                                     [AccelerateCustomCB(WeightedCrossEntropy(), gradient_accumulation_steps=2),
                                      MetricsCB()]),
}


def calls_during_fit(monkeypatch, setup, n_batches):
    model, dls, loss_func, cbs = setup(1)
    Learner(model, dls, loss_func, lr=0.01).fit(1, cbs=cbs)  # first calls pay for lazy set-up in torch
    model, dls, loss_func, cbs = setup(n_batches)
    learn = Learner(model, dls, loss_func, lr=0.01)
    with counted_calls(monkeypatch) as counts:
        learn.fit(1, cbs=cbs)
    return counts


@pytest.mark.parametrize("name", SETUPS)
def test_the_calls_a_fit_makes_do_not_grow_with_its_batches(monkeypatch, name):
    few = calls_during_fit(monkeypatch, SETUPS[name], 8)
    many = calls_during_fit(monkeypatch, SETUPS[name], 16)
    assert many == few, f"{name}: a fit of 16 batches made {dict(many)} calls, one of 8 made {dict(few)}"


def test_the_counter_sees_per_batch_calls(monkeypatch):
    # The guard itself: a callback that reads a signature every batch is counted.
    from minilearn import Callback

    class Inspecting(Callback):
        def after_batch(self, learn):
            inspect.signature(learn.model.forward)
            accelerate.utils.extract_model_from_parallel(learn.model)

    setup = lambda n: (nn.Linear(3, 1), tuple_data(n), F.mse_loss, [Inspecting()])
    few, many = calls_during_fit(monkeypatch, setup, 8), calls_during_fit(monkeypatch, setup, 16)
    # 8 more training batches and 8 more validation batches
    assert many["signature"] - few["signature"] == 16
    assert many["extract_model_from_parallel"] - few["extract_model_from_parallel"] == 16
