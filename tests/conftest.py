import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import Callback, DataLoaders, Learner
from minilearn.callbacks import reset_accelerate_state

ROOT = Path(__file__).resolve().parents[1]


def regression_dls(n_train=40, n_valid=16, bs=8, n_in=3, seed=0):
    """Small deterministic regression data: tuple batches (x (bs, n_in), y (bs, 1))."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_in, 1, generator=g)
    xs = torch.randn(n_train + n_valid, n_in, generator=g)
    ys = xs @ w + 0.1 * torch.randn(n_train + n_valid, 1, generator=g)
    train = DataLoader(TensorDataset(xs[:n_train], ys[:n_train]), batch_size=bs)
    valid = DataLoader(TensorDataset(xs[n_train:], ys[n_train:]), batch_size=bs)
    return DataLoaders(train, valid)


def uneven_batches(sizes, seed=0):
    """Tuple batches of the given sizes: x (n, 3), y (n, 1)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)) for n in sizes]


class FakeValidLoss(Callback):
    """Replaces the validation loss of each epoch by the next of `values` (after MetricsCB wrote it)."""

    order = 41

    def __init__(self, values):
        self.values = list(values)

    def after_epoch(self, learn):
        if not learn.training:
            learn.epoch_metrics["loss"] = self.values[learn.epoch]


@pytest.fixture
def make_learner():
    """Build a tiny regression Learner; keyword arguments go to Learner."""
    def make(cbs=None, seed=0, dls=None, **kwargs):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        kwargs.setdefault("loss_func", F.mse_loss)
        return Learner(model, dls or regression_dls(), cbs=cbs, **kwargs)
    return make


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps its state in process-wide singletons: each test that uses it starts and ends afresh
    (`pytestmark = pytest.mark.usefixtures("fresh_accelerate")`)."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The documentation site as `python -m mkdocs build --strict` makes it, once a test session: its folder.
    The build runs every notebook of nbs/ top to bottom in the small setting (docs/build_hooks.py)."""
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode == 0, f"the documentation build failed:\n{run.stdout[-3000:]}{run.stderr[-8000:]}"
    print(f"\nthe documentation site: {len(list(out.rglob('index.html')))} pages built in "
          f"{time.perf_counter() - start:.0f} s")
    return out
