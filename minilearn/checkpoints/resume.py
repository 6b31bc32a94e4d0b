"""Resuming a fit exactly where a checkpoint left it, also in the middle of an epoch.

A checkpoint's position is the epoch, its training batches done, and the random states then. To
resume mid-epoch the epoch's shuffle must come out the same, so the random states at the start of the
training pass are kept too: on resume they are set back, the loader is iterated past the batches done
(replaying its shuffle, workers' seeds and random augmentation), then the states of the save are set.
"""

import os
from collections.abc import Iterator
from typing import Any

from minilearn.checkpoints.files import read_checkpoint
from minilearn.checkpoints.learner_state import restore_learner, stateful_callbacks
from minilearn.checkpoints.random_state import random_states, set_random_states
from minilearn.distributed import rank, world_size
from minilearn.exceptions import CheckpointError

__all__ = ["TrainingPosition", "Resume"]


class TrainingPosition:
    """Follows the training passes of a Learner (`learn.position`): the random states at the start of
    the current pass and the number of its batches handed out; on resume, skips the batches done."""

    def __init__(self):
        self.pass_start: dict | None = None
        self.done = 0
        self._resume: tuple[int, dict, dict] | None = None

    def batches(self, learn) -> Iterator[tuple[int, Any]]:
        """`enumerate(learn.dl)` for a training pass, recording where it starts and how far it got."""
        loader = learn.dls.train  # learn.dl may be wrapped (a progress bar); the generators are the loader's
        resume, self._resume = self._resume, None
        if resume:
            set_random_states(resume[1], loader)
        self.pass_start, self.done = random_states(loader), 0
        batches = enumerate(learn.dl)
        if resume:
            skip, _, now = resume
            for self.done, _ in zip(range(1, skip + 1), batches):
                pass
            if self.done < skip:
                raise ValueError(f"the checkpoint was saved after {skip} training batches of epoch {learn.epoch}, "
                                 f"but the training loader now has only {self.done}: resume with the same data")
            set_random_states(now, loader)
        for i, batch in batches:
            self.done = i + 1  # a save from within this batch counts it as done
            yield i, batch

    def resume_point(self, epoch: int, training: bool) -> dict:
        """Where a fit saved now would resume: `{"epoch", "skip", "pass_start"}`. Saved during (or at the
        end of) a training pass, it resumes that pass after the `skip` batches done; saved later in the
        epoch, it resumes at the next epoch; before any training, at the start."""
        if self.pass_start is not None and training:
            return {"epoch": epoch, "skip": self.done, "pass_start": self.pass_start}
        return {"epoch": 0 if self.pass_start is None else epoch + 1, "skip": None, "pass_start": None}

    def resume_at(self, point: dict, now: dict, loader: Any) -> None:
        """Set the random states for resuming at `point` (from `resume_point`); `now` are the states of
        the moment of the save. Mid-epoch, this happens when the next training pass starts."""
        if point["skip"] is None:
            set_random_states(now, loader)
        else:
            self._resume = (point["skip"], point["pass_start"], now)

    def forget_resume(self) -> None:
        """Drop a pending mid-epoch resume (the fit that asked for it ended before its training pass)."""
        self._resume = None


class Resume:
    """What `fit(resume=path)` does with the checkpoint at `path`, read and checked when it is made,
    before the fit changes anything: `first_epoch` is where the fit goes on, and `restore(learn)`, run
    after every callback's `before_fit` (so schedules and prepared models exist), loads the weights,
    optimizer and callback states, and sets the random states and data position."""

    def __init__(self, path: str | os.PathLike):
        self.state, self.weights = read_checkpoint(path)
        self.path = path
        if "opt" not in self.state:
            raise CheckpointError(f"the checkpoint {path} was saved with with_opt=False: without the optimizer "
                                  f"state a fit cannot resume exactly; use learn.load(path) and fit afresh")

    @property
    def first_epoch(self) -> int:
        """The epoch the resumed fit starts at."""
        return self.state["position"]["epoch"]

    def restore(self, learn) -> None:
        """Put `learn` where the checkpoint was saved (see the class)."""
        # A checkpoint of several processes keeps each one's position and random states, and an exact
        # resume needs the same number of processes, each taking back its own.
        ranks = self.state.get("ranks")
        saved_by = len(ranks) if ranks else 1
        if saved_by != world_size():
            raise CheckpointError(f"the checkpoint {self.path} was saved by {saved_by} process(es) and this fit runs "
                                  f"{world_size()}: an exact resume needs the same number (each process takes back "
                                  f"its own random states and share of the data); learn.load(path) loads the "
                                  f"weights alone")
        mine = ranks[rank()] if ranks else self.state
        point = {**self.state["position"], "pass_start": mine["pass_start"]} if ranks else self.state["position"]
        now = mine["random"]
        saved = set(self.state["callbacks"])
        present = set(stateful_callbacks(learn.cbs))
        if saved != present:
            raise ValueError(f"fit(resume={str(self.path)!r}): the checkpoint holds the state of the callbacks "
                             f"{sorted(saved)}, but this fit has {sorted(present)}: pass the callbacks of the run that "
                             f"saved it (in Learner(cbs=...) or fit(cbs=...))")
        restore_learner(learn, self.state, self.weights, self.path)
        learn.position.resume_at(point, now, learn.dls.train)
