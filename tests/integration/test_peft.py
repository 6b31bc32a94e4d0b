"""A PEFT LoRA-wrapped GPT-2 under AccelerateCustomCB: only the adapter weights train, and
`learn.save`/`load` and `fit(resume=)` work on it (resume bit for bit: GPT-2's dropout and the
shuffled loader draw from the random states the checkpoint keeps)."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from support import collator, dataset, gpt2

from minilearn import Callback, DataLoaders, Learner
from minilearn.callbacks import AccelerateCustomCB, MetricsCB
from minilearn.losses import WeightedCrossEntropy


def lora_learner(seed: int = 0) -> Learner:
    model = get_peft_model(gpt2(seed), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                                                  lora_dropout=0.1))
    dls = DataLoaders.from_dsets(dataset(32, 0), dataset(16, 1), bs=8, collate_fn=collator())
    return Learner(model, dls, lr=0.05, opt_func=torch.optim.Adam, cbs=[AccelerateCustomCB(WeightedCrossEntropy(), cpu=True), MetricsCB()])


def state(learn: Learner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in learn.unwrapped_model.state_dict().items()}


class StopAfterEpoch(Callback):
    order = 100

    def __init__(self, path, epoch):
        self.path, self.epoch = path, epoch

    def after_epoch(self, learn):
        if not learn.training and learn.epoch == self.epoch:
            learn.save(self.path)
            raise KeyboardInterrupt


def test_only_the_adapters_train_and_the_loss_falls():
    learn = lora_learner()
    before = state(learn)
    learn.fit(3)
    after = state(learn)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all("lora_" in k for k in changed), changed
    assert {k for k in before if "lora_B" in k} <= set(changed)  # B starts at zero: it must have moved
    metrics = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB))
    valid = [row["loss"] for row in metrics.history if row["phase"] == "valid"]
    assert valid[-1] < valid[0] - 0.02  # a frozen random base leaves the adapters little to gain quickly


def test_save_load_and_an_exact_resume_of_a_lora_model(tmp_path):
    torch.manual_seed(1)
    full = lora_learner()
    full.fit(3)
    expected = state(full)

    torch.manual_seed(1)
    interrupted = lora_learner()
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(3, cbs=StopAfterEpoch(tmp_path / "ck", 0))
    loaded = lora_learner(seed=7)
    loaded.load(tmp_path / "ck")
    assert all(torch.equal(v, state(interrupted)[k]) for k, v in state(loaded).items())

    torch.manual_seed(99)  # a new run starts from other random states and other weights
    resumed = lora_learner(seed=5)
    resumed.fit(3, resume=tmp_path / "ck")
    got = state(resumed)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
