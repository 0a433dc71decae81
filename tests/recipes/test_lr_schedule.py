"""recipes.common.warmup_cosine: the one learning-rate schedule of the three trainers."""

import math

import pytest
import torch

from recipes.common import warmup_cosine

SCHEDULE = dict(warmup_steps=10, total_steps=110, min_ratio=0.1)


def test_values_at_warmup_end_midpoint_and_end():
    assert warmup_cosine(0, **SCHEDULE) == pytest.approx(0.1)                # the first step already trains
    assert warmup_cosine(4, **SCHEDULE) == pytest.approx(0.5)                # linear warm-up
    assert warmup_cosine(9, **SCHEDULE) == 1.0                               # warm-up end: the peak
    assert warmup_cosine(10, **SCHEDULE) == 1.0                              # the cosine starts at the peak
    assert warmup_cosine(60, **SCHEDULE) == pytest.approx(0.55)              # midpoint: halfway to the floor
    assert warmup_cosine(35, **SCHEDULE) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(110, **SCHEDULE) == pytest.approx(0.1)              # end: the floor
    assert warmup_cosine(500, **SCHEDULE) == pytest.approx(0.1)              # and it stays there


def test_peak_scales_the_whole_schedule():
    for step in (0, 9, 60, 110):
        assert warmup_cosine(step, **SCHEDULE, peak=3e-3) == pytest.approx(3e-3 * warmup_cosine(step, **SCHEDULE))


def test_no_warmup_and_a_lambdalr_resumed_from_its_state():
    assert warmup_cosine(0, warmup_steps=0, total_steps=100, min_ratio=0.0) == 1.0
    make = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, **SCHEDULE))  # noqa: E731
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    sched = make(opt)
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 * 0.55)
    fresh = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    resumed = make(fresh)
    resumed.load_state_dict(sched.state_dict())                              # what a checkpoint restores
    resumed.step()
    sched.step()
    assert resumed.get_last_lr() == sched.get_last_lr()
