"""Exact resume: a fit interrupted (in-process, or by SIGKILL in the middle of a save) and resumed from
its surviving checkpoint ends with the weights of a fit never interrupted, bit for bit. The run draws
from every generator a checkpoint keeps: dropout (torch), a shuffled loader (global RNG or its own
generator), random augmentation with Python's `random` and numpy, Adam's state and a one-cycle schedule."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minilearn import CheckpointError
from minilearn.callbacks import EarlyStoppingCB, OneCycleCB, SaveModelCB

from support import make_learner, seed_everything, SaveThenInterrupt  # noqa: F401




def uninterrupted(own_generator, n_epochs=3):
    seed_everything(1)
    learn = make_learner(own_generator)
    learn.fit(n_epochs, cbs=OneCycleCB(0.1))
    return [p.detach().clone() for p in learn.model.parameters()]


@pytest.mark.parametrize("own_generator", [False, True], ids=["global-rng-shuffle", "loader-generator"])
@pytest.mark.parametrize("epoch, iter", [(1, 2), (0, 5), (1, None)], ids=["mid-epoch", "end-of-train-pass", "epoch-end"])
def test_resume_gives_the_uninterrupted_weights_bit_for_bit(tmp_path, own_generator, epoch, iter):
    expected = uninterrupted(own_generator)
    seed_everything(1)
    learn = make_learner(own_generator)
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3, cbs=[OneCycleCB(0.1), SaveThenInterrupt(tmp_path / "ck", epoch, iter)])
    seed_everything(99)  # a new process would start from other random states and other weights
    resumed = make_learner(own_generator, seed=5)
    resumed.fit(3, cbs=OneCycleCB(0.1), resume=tmp_path / "ck")
    assert all(torch.equal(p, q) for p, q in zip(expected, resumed.model.parameters()))


def test_resume_needs_the_callbacks_that_saved_state_and_the_same_data(tmp_path):
    seed_everything(1)
    learn = make_learner()
    with pytest.raises(KeyboardInterrupt):
        learn.fit(3, cbs=[OneCycleCB(0.1), SaveThenInterrupt(tmp_path / "ck", 1, 2)])
    other = make_learner()
    with pytest.raises(ValueError, match=r"^fit\(resume='.*ck'\): the checkpoint holds the state of the callbacks "
                                         r"\['OneCycleCB'\], but this fit has \[\]: pass the callbacks") as err:
        other.fit(3, resume=tmp_path / "ck")
    assert not getattr(err.value, "__notes__", None)  # the error is fit's, not a callback's the user never added
    other.dls.train = list(other.dls.train)[:2]
    with pytest.raises(ValueError, match="saved after 3 training batches of epoch 1, but the training loader now has only 2"):
        other.fit(3, cbs=OneCycleCB(0.1), resume=tmp_path / "ck")
    other.fit(1)  # the learner is still usable, and starts from the beginning


def test_a_checkpoint_without_optimizer_state_cannot_resume(tmp_path):
    learn = make_learner()
    learn.fit(1)
    learn.save(tmp_path / "ck", with_opt=False)
    with pytest.raises(CheckpointError, match="saved with with_opt=False"):
        learn.fit(2, resume=tmp_path / "ck")


def test_resumed_early_stopping_stops_where_the_uninterrupted_fit_stopped(tmp_path):
    def run(cbs, resume=None):
        seed_everything(1)
        learn = make_learner()
        stop = EarlyStoppingCB(patience=1, min_delta=10.0)  # never improves after the first epoch
        learn.fit(5, cbs=[stop, *cbs], resume=resume)
        return learn, stop

    full, full_stop = run([])
    assert full_stop.message and "stopped after epoch 1" in full_stop.message
    with pytest.raises(KeyboardInterrupt):
        run([SaveThenInterrupt(tmp_path / "ck", 0)])
    resumed, resumed_stop = run([], resume=tmp_path / "ck")
    assert resumed_stop.message == full_stop.message
    assert all(torch.equal(p, q) for p, q in zip(full.model.parameters(), resumed.model.parameters()))


CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, {tests!r})
    from support import make_learner, seed_everything
    from minilearn import Callback
    from minilearn.callbacks import OneCycleCB, SaveModelCB

    mode, ckpt_dir, out = sys.argv[1:4]
    torch.use_deterministic_algorithms(True)

    class ArmAtEpoch2(Callback):
        order = 69  # just before SaveModelCB saves
        armed = False
        def after_epoch(self, learn):
            ArmAtEpoch2.armed = not learn.training and learn.epoch == 2

    real_replace = os.replace

    def replace_or_die(src, dst):  # both new files are complete; the manifest is about to be renamed into place
        if ArmAtEpoch2.armed and os.path.basename(dst) == "checkpoint.json":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)

    if mode == "kill-before-manifest":
        os.replace = replace_or_die

    seed_everything(1)
    learn = make_learner(own_generator=True)
    saver = SaveModelCB(every_epoch=True, keep=2, path=ckpt_dir)
    learn.fit(4, cbs=[OneCycleCB(0.1), saver, ArmAtEpoch2()], resume=saver.latest if mode == "resume" else None)
    save_file({{k: v.contiguous() for k, v in learn.model.state_dict().items()}}, out)
""")


@pytest.fixture
def child_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("child") / "train.py"
    path.write_text(CHILD.format(tests=str(Path(__file__).parents[1])))
    return path


def run_child(script, *args):
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def uninterrupted_weights(child_script, tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    done = run_child(child_script, "full", d / "ckpts", d / "final.safetensors")
    assert done.returncode == 0, done.stderr
    return load_file(d / "final.safetensors")


def test_sigkill_during_a_save_then_resume_gives_the_uninterrupted_weights(child_script, uninterrupted_weights, tmp_path):
    # Killed with both new files complete and the manifest not yet renamed into place: the most
    # written a save can be without being done. (A save failing earlier is in test_checkpoint.py.)
    ckpts = tmp_path / "ckpts"
    killed = run_child(child_script, "kill-before-manifest", ckpts, tmp_path / "never.safetensors")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.safetensors").exists()
    # The save of epoch 2 was cut short: its directory is there, but it is not a checkpoint.
    assert (ckpts / "epoch-0002").is_dir()
    saver = SaveModelCB(path=ckpts)
    assert [p.name for p in saver.checkpoints()] == ["epoch-0000", "epoch-0001"] and saver.latest.name == "epoch-0001"

    resumed = run_child(child_script, "resume", ckpts, tmp_path / "final.safetensors")
    assert resumed.returncode == 0, resumed.stderr
    final = load_file(tmp_path / "final.safetensors")
    assert final.keys() == uninterrupted_weights.keys()
    assert all(torch.equal(final[k], uninterrupted_weights[k]) for k in final)
    # The resumed run saved epochs 2 and 3 over the debris and kept the newest two.
    assert [p.name for p in saver.checkpoints()] == ["epoch-0002", "epoch-0003"]
    assert sorted(f.name.split("-")[0] for f in (ckpts / "epoch-0002").iterdir()) == ["checkpoint.json", "model", "state"]
