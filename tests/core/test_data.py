"""DataLoaders, to_device and batch_size."""

from collections import namedtuple

import pytest
import torch
from torch.utils.data import TensorDataset

from minilearn import DataLoaders, batch_size, to_device
from minilearn.data import looks_padded


def test_from_dsets_makes_a_shuffled_train_loader_and_an_ordered_valid_loader():
    ds = TensorDataset(torch.arange(20).float())
    torch.manual_seed(0)
    dls = DataLoaders.from_dsets(ds, ds, bs=5, drop_last=False)
    train = torch.cat([b[0] for b in dls.train])
    valid = torch.cat([b[0] for b in dls.valid])
    assert len(dls.train) == len(dls.valid) == 4
    assert sorted(train.tolist()) == valid.tolist() and train.tolist() != valid.tolist()


def test_from_dsets_passes_the_collate_fn():
    ds = [{"a": i} for i in range(6)]
    dls = DataLoaders.from_dsets(ds, ds, bs=3, collate_fn=lambda items: torch.tensor([d["a"] for d in items]))
    assert [b.tolist() for b in dls.valid] == [[0, 1, 2], [3, 4, 5]]


def test_to_device_handles_nesting_and_keeps_types():
    Pair = namedtuple("Pair", "x y")
    data = {"a": torch.zeros(2), "b": [torch.ones(1), (torch.ones(1), 3)], "c": Pair(torch.zeros(1), "s")}
    out = to_device(data, torch.device("cpu"))
    assert isinstance(out, dict) and isinstance(out["b"], list) and isinstance(out["b"][1], tuple)
    assert isinstance(out["c"], Pair) and out["c"].y == "s" and out["b"][1][1] == 3
    assert torch.equal(out["a"], data["a"])


def test_to_device_moves_tensors_to_the_named_device():
    out = to_device((torch.zeros(3),), "meta")
    assert out[0].device.type == "meta"


def test_batch_size():
    assert batch_size((torch.zeros(7, 2), torch.zeros(7))) == 7
    assert batch_size({"mask": [1, 2, 3], "ids": torch.zeros(3, 4)}) == 3
    with pytest.raises(ValueError, match="batch size"):
        batch_size({"n": 3})


def test_looks_padded_sees_padding_on_either_side_and_not_rows_of_one_length():
    g = torch.Generator().manual_seed(0)
    unpadded, seen = 0, 0
    for _ in range(500):
        ids = torch.randint(1, 1000, (8, 16), generator=g)
        unpadded += looks_padded(ids) is not None
        real = torch.arange(16) < torch.randint(4, 17, (8,), generator=g)[:, None]  # padded to the longest row
        seen += looks_padded(torch.where(real, ids, 0)) == ("right", 0)
        seen += looks_padded(torch.where(real.flip(1), ids, 7)) == ("left", 7)
    assert unpadded == 0 and seen >= 900  # of 1000 (it misses batches with fewer than 2 rows padded by 2 or more)
    counting = (torch.randint(0, 12, (16, 1), generator=g) + torch.arange(6)) % 12  # the exercise notebook's rows
    assert looks_padded(counting) is None and looks_padded(torch.zeros(4, 5)) is None


def test_from_dsets_refuses_an_empty_training_set_and_warns_of_an_empty_validation_set():
    full, empty = TensorDataset(torch.zeros(4, 2)), TensorDataset(torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"the training set is empty \(len\(train_ds\) == 0, a TensorDataset\)"):
        DataLoaders.from_dsets(empty, full)
    with pytest.warns(UserWarning, match=r"the validation set is empty .*no validation loss"):
        dls = DataLoaders.from_dsets(full, empty)
    assert len(dls.valid) == 0
