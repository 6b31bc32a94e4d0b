"""Checkpoints: what `learn.save` keeps and `learn.load` restores, atomic replacement when a save is cut
short, and clear refusals of corrupted, mismatched and pickled checkpoints (the payload never runs)."""

import builtins
import json
import os

import pytest
import torch
from torch import nn

from minilearn import Callback, CheckpointError, Learner
from minilearn.callbacks import OneCycleCB
from minilearn.checkpoints.files import MANIFEST, atomic_write, is_checkpoint, read_checkpoint, remove_checkpoint

from conftest import regression_dls


def adam_learner(make_learner, seed=0, **kwargs):
    return make_learner(seed=seed, opt_func=torch.optim.Adam, lr=0.01, **kwargs)


def params(learn):
    return [p.detach().clone() for p in learn.model.parameters()]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def files(path):
    return sorted(f.name for f in path.iterdir())


def test_save_and_load_round_trip_weights_optimizer_and_callback_state(make_learner, tmp_path):
    sched = OneCycleCB(0.05)
    learn = adam_learner(make_learner, cbs=sched)
    learn.fit(2)
    learn.save(tmp_path / "ck")
    names = files(tmp_path / "ck")
    assert names[0] == MANIFEST and names[1].endswith(".safetensors") and names[2].endswith(".pt")

    other_sched = OneCycleCB(0.05)
    other = adam_learner(make_learner, seed=1, cbs=other_sched)
    other.fit(1)  # a different state everywhere, so that the load has something to overwrite
    other.load(tmp_path / "ck")
    assert same(params(learn), params(other))
    a, b = learn.opt.state_dict(), other.opt.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k in a["state"]:
        assert all(torch.equal(a["state"][k][n], b["state"][k][n]) for n in a["state"][k])
    assert other_sched.sched.state_dict() == sched.sched.state_dict()


def test_load_before_any_fit_builds_the_optimizer_and_with_opt_false_leaves_it(make_learner, tmp_path):
    learn = adam_learner(make_learner)
    learn.fit(1)
    learn.save(tmp_path / "ck")
    fresh = adam_learner(make_learner, seed=3)
    fresh.load(tmp_path / "ck", with_opt=False)
    assert fresh.opt is None and same(params(fresh), params(learn))
    fresh.load(tmp_path / "ck")
    assert isinstance(fresh.opt, torch.optim.Adam) and len(fresh.opt.state) == 4
    learn.save(tmp_path / "weights_only", with_opt=False)
    assert "opt" not in read_checkpoint(tmp_path / "weights_only")[0]


def test_tied_weights_are_stored_once_and_load_back_tied(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.emb(x))

    torch.manual_seed(0)
    learn = Learner(Tied(), regression_dls(), None)
    learn.save(tmp_path / "ck")
    assert len(read_checkpoint(tmp_path / "ck")[1]) == 1
    torch.manual_seed(1)
    other = Learner(Tied(), regression_dls(), None)
    other.load(tmp_path / "ck")
    assert torch.equal(other.model.emb.weight, learn.model.emb.weight)
    assert other.model.head.weight is other.model.emb.weight


def test_overwriting_a_checkpoint_that_fails_midway_leaves_the_old_one(make_learner, tmp_path, monkeypatch):
    learn = make_learner()
    learn.fit(1)
    learn.save(tmp_path / "ck")
    saved, before = params(learn), files(tmp_path / "ck")
    learn.fit(1)
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(dst) == MANIFEST:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        learn.save(tmp_path / "ck")
    monkeypatch.undo()
    # The new weights and state were written under new names, but the manifest still names the old ones.
    assert not any(n.endswith(".tmp") for n in files(tmp_path / "ck"))
    learn.load(tmp_path / "ck")
    assert same(params(learn), saved)
    learn.save(tmp_path / "ck")  # the next save works and clears the files the failed one left
    assert len(files(tmp_path / "ck")) == 3 and files(tmp_path / "ck") != before


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("new, half writ")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and files(tmp_path) == ["f.txt"]


def corrupt_first_byte_after(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip a weight byte", "truncate the state", "delete the weights",
                                    "garble the manifest"])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_nothing_changes(make_learner, tmp_path, damage):
    learn = make_learner()
    learn.save(tmp_path / "ck")
    ck = tmp_path / "ck"
    weights_file, state_file = sorted(ck.glob("model-*"))[0], sorted(ck.glob("state-*"))[0]
    if damage == "flip a weight byte":
        corrupt_first_byte_after(weights_file, weights_file.stat().st_size - 3)
        culprit, match = weights_file, "corrupted"
    elif damage == "truncate the state":
        state_file.write_bytes(state_file.read_bytes()[:50])
        culprit, match = state_file, "corrupted"
    elif damage == "delete the weights":
        weights_file.unlink()
        culprit, match = weights_file, "missing"
    else:
        (ck / MANIFEST).write_text("{not json")
        culprit, match = ck / MANIFEST, "corrupted"
    other = make_learner(seed=1)
    before = params(other)
    with pytest.raises(CheckpointError, match=match) as err:
        other.load(ck)
    assert str(culprit) in str(err.value)
    assert same(before, params(other)) and other.opt is None
    other.fit(1)  # still usable


def test_a_directory_without_manifest_or_no_directory_is_not_a_checkpoint(make_learner, tmp_path):
    learn = make_learner()
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint: it has no checkpoint.json"):
        learn.load(tmp_path / "half")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        learn.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        learn.fit(1, resume=tmp_path / "nowhere")
    assert learn.opt is None  # the fit refused before doing anything


def test_weights_that_do_not_fit_the_model_are_refused_and_nothing_changes(tmp_path):
    Learner(nn.Linear(3, 2), regression_dls(), None).save(tmp_path / "ck")
    wrong = Learner(nn.Sequential(nn.Linear(3, 2)), regression_dls(), None)
    with pytest.raises(CheckpointError, match=r"missing \['0.weight', '0.bias'\], unexpected \['bias', 'weight'\]"):
        wrong.load(tmp_path / "ck")
    narrow = Learner(nn.Linear(3, 1), regression_dls(), None)
    before = params(narrow)
    with pytest.raises(CheckpointError, match=r"weight: checkpoint \(2, 3\), model \(1, 3\)"):
        narrow.load(tmp_path / "ck")
    assert same(before, params(narrow))


def test_an_optimizer_state_of_another_shape_is_refused(make_learner, tmp_path):
    learn = adam_learner(make_learner)
    learn.fit(1)
    learn.save(tmp_path / "ck")
    other = make_learner(opt_func=lambda p, lr: torch.optim.SGD([{"params": list(p)[:2]}], lr=lr))
    with pytest.raises(CheckpointError, match="optimizer state in .* does not fit SGD"):
        other.load(tmp_path / "ck")


class Payload:
    """Unpickling this would run code: it creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


class Custom:
    """A harmless custom class: refused all the same, it is not plain data."""


@pytest.mark.parametrize("payload", ["code", "custom class"])
def test_a_crafted_pickled_checkpoint_is_refused_and_its_code_does_not_run(make_learner, tmp_path, payload):
    learn = make_learner()
    learn.save(tmp_path / "ck")
    ck, marker = tmp_path / "ck", tmp_path / "pwned"
    state_file = sorted(ck.glob("state-*"))[0]
    state = torch.load(state_file, weights_only=True)
    state["position"] = Payload(marker) if payload == "code" else Custom()
    torch.save(state, state_file)
    # An attacker would also fix the checksum, so that only the unpickling stands in the way.
    manifest = json.loads((ck / MANIFEST).read_text())
    import hashlib
    manifest["files"]["state"]["sha256"] = hashlib.sha256(state_file.read_bytes()).hexdigest()
    (ck / MANIFEST).write_text(json.dumps(manifest))
    before = params(learn)
    with pytest.raises(CheckpointError, match="holds pickled objects that are not plain data, so it was refused") as err:
        learn.load(ck)
    assert str(state_file) in str(err.value)
    assert ("exec" if payload == "code" else "Custom") in str(err.value)
    with pytest.raises(CheckpointError):
        learn.fit(1, resume=ck)
    assert not marker.exists()
    assert same(before, params(learn))


def test_a_callback_state_that_is_not_plain_data_is_refused_before_writing(make_learner, tmp_path):
    class Bad(OneCycleCB):
        def state_dict(self):
            return {"fn": print}

    learn = make_learner(cbs=Bad(0.1))
    with pytest.raises(TypeError, match=r"state\['callbacks'\]\['Bad'\]\['fn'\] is a builtin_function_or_method"):
        learn.save(tmp_path / "ck")
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_remove_checkpoint_deletes_the_manifest_first_and_leaves_other_files(make_learner, tmp_path):
    learn = make_learner()
    learn.save(tmp_path / "ck")
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    assert is_checkpoint(tmp_path / "ck")
    remove_checkpoint(tmp_path / "ck")
    assert files(tmp_path / "ck") == ["notes.txt"]


class ScaledStepCB(Callback):
    """The float16 step with a loss scaler (as Accelerate's on a GPU), here with torch's CPU scaler."""

    order = 60

    def __init__(self):
        self.scaler = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=1)  # the scale doubles a step

    def before_fit(self, learn):
        learn.grad_scaler = self.scaler

    def backward(self, learn):
        self.scaler.scale(learn.loss).backward()

    def step(self, learn):
        self.scaler.step(learn.opt)
        self.scaler.update()


def test_the_loss_scaler_state_is_saved_with_the_optimizer_and_loaded_back(make_learner, tmp_path):
    learn = adam_learner(make_learner, cbs=ScaledStepCB())
    learn.fit(1)
    scale = learn.grad_scaler.get_scale()
    assert scale > 8.0
    learn.save(tmp_path / "ck")
    assert read_checkpoint(tmp_path / "ck")[0]["grad_scaler"]["scale"] == scale
    scaled = ScaledStepCB()
    other = adam_learner(make_learner, seed=1, cbs=scaled)
    other.grad_scaler = scaled.scaler  # as its before_fit would
    other.load(tmp_path / "ck", with_opt=False)
    assert other.grad_scaler.get_scale() == 8.0  # the scaler goes with the optimizer
    other.load(tmp_path / "ck")
    assert other.grad_scaler.get_scale() == scale
    learn.grad_scaler = None
    learn.save(tmp_path / "plain")
    assert "grad_scaler" not in read_checkpoint(tmp_path / "plain")[0]
