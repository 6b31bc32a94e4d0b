"""What `Learner.save` and `Learner.load` write and read: a learner's training state in a checkpoint
(weights, optimizer, callbacks' states, position in the fit, random states)."""

import os
from pathlib import Path

from minilearn.callback import Callback
from minilearn.checkpoints.files import check_weights, read_checkpoint, save_checkpoint
from minilearn.checkpoints.random_state import random_states
from minilearn.distributed import barrier, gather_objects, rank, world_size
from minilearn.exceptions import CheckpointError

__all__ = ["stateful_callbacks", "save_learner", "load_learner", "restore_learner"]


def stateful_callbacks(cbs: list[Callback]) -> dict[str, Callback]:
    """The callbacks that keep state in a checkpoint (they define `state_dict` and `load_state_dict`),
    by a key made of the class name, numbered when a class appears more than once: `OneCycleCB`,
    `EarlyStoppingCB`, `SaveModelCB.1`, ..."""
    found = [cb for cb in sorted(cbs, key=lambda cb: cb.order)
             if callable(getattr(cb, "state_dict", None)) and callable(getattr(cb, "load_state_dict", None))]
    names = [cb.name for cb in found]
    return {(n if names.count(n) == 1 else f"{n}.{names[:i].count(n)}"): cb for i, (n, cb) in enumerate(zip(names, found))}


def save_learner(learn, path: str | os.PathLike, with_opt: bool = True) -> Path:
    """Save `learn`'s training state in a checkpoint directory at `path` (`Learner.save`): the model's
    weights and, as plain data, the optimizer's and float16 loss scaler's states (when `with_opt`),
    those of callbacks that keep one, the position in the fit and the random states, so that
    `fit(..., resume=path)` continues exactly. The write is atomic: if it is interrupted, the
    checkpoint that was at `path` before is left intact. Called from within a training batch, that
    batch counts as done; after the training pass, the fit resumes at the next epoch.

    Under several processes it is a collective: each process's random states (now and at the start
    of its pass) are gathered into
    `state["ranks"]`, the main process writes, and all return once the checkpoint is complete.

    >>> import tempfile
    >>> import torch
    >>> from minilearn import DataLoaders, Learner
    >>> learn = Learner(torch.nn.Linear(2, 1), DataLoaders([], []), torch.nn.functional.mse_loss)
    >>> path = save_learner(learn, Path(tempfile.mkdtemp()) / "ckpt")
    >>> load_learner(learn, path)
    """
    state = {"position": learn.position.resume_point(learn.epoch, learn.training),
             "random": random_states(learn.dls.train),
             "callbacks": {k: cb.state_dict() for k, cb in stateful_callbacks(learn.cbs).items()}}
    if world_size() > 1:
        # Each process draws its own dropout masks and augmentation: every one's states are kept.
        state["ranks"] = gather_objects({"random": state["random"], "pass_start": state["position"]["pass_start"]})
    if with_opt and learn.opt is not None:
        state["opt"] = learn.opt.state_dict()
        if learn.grad_scaler is not None:  # float16: the loss scale belongs with the optimizer's state
            state["grad_scaler"] = learn.grad_scaler.state_dict()
    if rank() == 0:
        save_checkpoint(path, learn.unwrapped_model, state)
    barrier()  # no process reads the checkpoint, or goes on to change the weights, before it is written
    return Path(path)


def restore_learner(learn, state: dict, weights: dict, source: str | os.PathLike, with_opt: bool = True) -> None:
    """Put a checkpoint read by `read_checkpoint` into `learn`: the weights, the optimizer state (when
    `with_opt`; the optimizer is built if there is none yet) and the states of the callbacks present
    that keep one. Everything is checked before anything changes."""
    model = learn.unwrapped_model
    check_weights(model, weights, source)
    if with_opt and "opt" in state:
        had, opt = learn.opt, learn.create_opt()
        try:
            opt.load_state_dict(state["opt"])  # checks the parameter groups before it changes anything
        except (ValueError, KeyError) as e:
            learn.opt = had
            raise CheckpointError(f"the optimizer state in {source} does not fit {type(opt).__name__}: {e}") from None
    if with_opt and "grad_scaler" in state and learn.grad_scaler is not None:
        learn.grad_scaler.load_state_dict(state["grad_scaler"])
    model.load_state_dict(weights, strict=False)  # checked above; tied weights are stored once
    cb_states = state.get("callbacks", {})
    for key, cb in stateful_callbacks(learn.cbs).items():
        if key in cb_states:
            cb.load_state_dict(cb_states[key])


def load_learner(learn, path: str | os.PathLike, with_opt: bool = True) -> None:
    """Load a checkpoint written by `save_learner` into `learn` (`Learner.load`), as `restore_learner`
    does. Raises `CheckpointError`, changing nothing, when the checkpoint is missing, corrupted, holds
    pickled objects, or does not fit the model or optimizer."""
    restore_learner(learn, *read_checkpoint(path), path, with_opt)
