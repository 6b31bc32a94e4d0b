"""minilearn.losses as a package: every module has `__all__` and docstrings, the package exports what
its modules export, and the earlier names of renamed losses still work, with a warning."""

import importlib
import inspect
import pkgutil
import warnings

import pytest
import torch

import minilearn.losses as losses
from minilearn.losses import (ImportanceWeightedCrossEntropy, dpo_loss, importance_weighted_cross_entropy,
                              make_bradley_terry_loss, make_candidate_ce_loss, make_variance_loss)

MODULES = sorted(m.name for m in pkgutil.walk_packages(losses.__path__, prefix="minilearn.losses."))


def test_the_walk_finds_the_sequence_losses():
    assert {"minilearn.losses.weighted_ce", "minilearn.losses.sequence.preference"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES + ["minilearn.losses", "minilearn.callbacks.loss"])
def test_every_public_name_has_a_docstring(name):
    mod = importlib.import_module(name)
    objects = [getattr(mod, public) for public in mod.__all__]
    assert mod.__doc__ and all(o.__doc__ for o in objects if inspect.isclass(o) or inspect.isfunction(o)), name


def test_the_package_exports_every_module_export():
    for name in MODULES:
        if name == "minilearn.losses.renamed":  # importable from the package, but not advertised
            continue
        for public in importlib.import_module(name).__all__:
            assert public in losses.__all__ and getattr(losses, public) is not None, (name, public)
    from minilearn.callbacks import __all__
    assert "LossCB" in __all__


def _sequence_batch():
    g = torch.Generator().manual_seed(0)
    lps = [-torch.rand(n, generator=g, dtype=torch.float64) for n in (3, 2, 4, 1)]
    return {"ref_logprobs": [lp - 0.1 for lp in lps]}, lps


@pytest.mark.parametrize("old, new, args", [
    ("make_dpo_loss", dpo_loss, (0.2,)),
    ("bradley_terry_loss", make_bradley_terry_loss, ()),
    ("variance_loss", make_variance_loss, (0.5,)),
])
def test_an_earlier_name_warns_and_builds_the_same_loss(old, new, args):
    batch, lps = _sequence_batch()
    with pytest.warns(FutureWarning, match=f"{old} is now called {new.__name__}"):
        fn = getattr(losses, old)(*args)
    assert fn(batch, lps)[0].item() == new(*args)(batch, lps)[0].item()


def test_the_earlier_candidate_and_importance_sampling_names_warn_and_compute_the_same():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(2, 3, 5, generator=g, dtype=torch.float64), torch.randint(0, 5, (2, 3), generator=g)
    w, iw = torch.rand(2, 3, generator=g, dtype=torch.float64), torch.rand(2, 3, generator=g, dtype=torch.float64)
    with pytest.warns(FutureWarning, match="ImportanceWeightedCrossEntropy"):
        module = losses.ImportanceSamplingLoss(clip_ratio=0.5)
    assert isinstance(module, ImportanceWeightedCrossEntropy)
    assert module(logits, targets, w, iw).item() == ImportanceWeightedCrossEntropy(0.5)(logits, targets, w, iw).item()
    with pytest.warns(FutureWarning, match="importance_weighted_cross_entropy"):
        value = losses.importance_sampling_loss(logits, targets, w, iw)
    assert value.item() == importance_weighted_cross_entropy(logits, targets, w, iw).item()
    with pytest.warns(FutureWarning, match="make_candidate_ce_loss"):
        fn = losses.candidate_ce_loss(1)
    lps = [torch.log(torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64))]
    assert fn({}, lps)[0].item() == make_candidate_ce_loss(1)({}, lps)[0].item()


def test_the_new_names_do_not_warn():
    batch, lps = _sequence_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dpo_loss(0.1)(batch, lps)
        ImportanceWeightedCrossEntropy()
