"""GradClipCB bounds the gradient norm the step sees."""

import torch
from minilearn import Callback
from minilearn.callbacks import GradClipCB


def test_grad_clip_bounds_the_norm_seen_by_the_step(make_learner):
    norms = []

    class NormAtStep(Callback):
        order = 40

        def after_backward(self, learn):
            norms.append(torch.nn.utils.get_total_norm([p.grad for p in learn.model.parameters()]))

    learn = make_learner(lr=0.0)
    clip = GradClipCB(1e-3)
    learn.fit(1, cbs=[clip, NormAtStep()], valid=False)
    assert all(n <= 1e-3 * (1 + 1e-5) for n in norms)
    assert clip.last_norm > 1e-3  # it really had something to clip
