"""The learning-rate schedules: autograd.optim owns the formulas (`scheduled_lr`, `lr_schedule`),
and the training loop's `LoopConfig.lr_at` gives the very same floats."""
import pytest

from autograd.optim import SCHEDULES, cosine_with_warmup, lr_schedule, scheduled_lr
from gpt.train.loop import LoopConfig


def loop_lrs(max_steps: int, **schedule) -> list[float]:
    """The lr of every step of a LoopConfig run of `max_steps` steps (no time budget)."""
    config = LoopConfig(max_steps=max_steps, lr=1.0, **schedule)
    return [config.lr_at(s, config.fraction_done(s, 0.0)) for s in range(max_steps)]


def test_cosine_by_hand():
    # warmup 2 of 8 steps: 1/2, 1; then p = (step - 2) / 6 and lr = 0.1 + 0.9 (1 + cos(pi p)) / 2
    schedule = lr_schedule("cosine", 1.0, warmup_steps=2, total_steps=8, min_lr=0.1)
    expected = {0: 0.5, 1: 1.0, 2: 1.0,
                4: 0.1 + 0.9 * 0.75,                 # p = 1/3: cos(pi/3) = 1/2
                5: 0.55,                             # p = 1/2: the mean of peak and floor
                6: 0.1 + 0.9 * 0.25,                 # p = 2/3: cos(2 pi/3) = -1/2
                8: 0.1, 50: 0.1}                     # the floor, from the end on
    assert {s: schedule(s) for s in expected} == pytest.approx(expected)
    assert loop_lrs(8, schedule="cosine", warmup_steps=2, min_lr=0.1) == \
        [schedule(s) for s in range(8)]
    assert [schedule(s) for s in range(60)] == [cosine_with_warmup(s, 1.0, 2, 8, 0.1)
                                                for s in range(60)]


def test_wsd_by_hand():
    # warmup 2 of 12 steps, p = (step - 2) / 10; decay over the last half: from p = 1/2 (step 7)
    # lr = 0.1 + 0.9 (1 - p) / 0.5
    schedule = lr_schedule("wsd", 1.0, warmup_steps=2, total_steps=12, min_lr=0.1,
                           decay_fraction=0.5)
    expected = {0: 0.5, 1: 1.0, 2: 1.0, 5: 1.0, 7: 1.0,     # warmup, then held
                8: 0.1 + 0.9 * 0.8, 9: 0.1 + 0.9 * 0.6,    # p = 0.6, 0.7
                10: 0.1 + 0.9 * 0.4, 11: 0.1 + 0.9 * 0.2,
                12: 0.1, 40: 0.1}
    assert {s: schedule(s) for s in expected} == pytest.approx(expected)
    assert loop_lrs(12, schedule="wsd", warmup_steps=2, min_lr=0.1, decay_fraction=0.5) == \
        [schedule(s) for s in range(12)]


def test_constant_by_hand():
    schedule = lr_schedule("constant", 0.3, warmup_steps=3)            # needs no run length
    assert [schedule(s) for s in (0, 1, 2, 3, 10_000)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    config = LoopConfig(max_steps=10, lr=0.3, schedule="constant", warmup_steps=3)
    assert [config.lr_at(s, config.fraction_done(s, 0.0)) for s in range(10)] == \
        [schedule(s) for s in range(10)]


def test_the_same_floats_as_before_the_loop_shared_the_formulas():
    """Bit for bit what LoopConfig.lr_at computed on its own (recorded from it), so a run
    started before the change resumes exactly after it."""
    assert loop_lrs(8, schedule="cosine", warmup_steps=2, min_lr=0.1)[3:] == \
        [0.9397114317029974, 0.775, 0.55, 0.3250000000000001, 0.16028856829700258]
    assert loop_lrs(12, schedule="wsd", warmup_steps=2, min_lr=0.1, decay_fraction=0.5)[8:] == \
        [0.8200000000000001, 0.6400000000000001, 0.45999999999999996, 0.27999999999999997]


def test_a_time_budget_drives_the_same_formula_by_its_progress():
    timed = LoopConfig(max_steps=None, lr=1.0, schedule="wsd", max_seconds=100.0,
                       decay_fraction=0.5, min_lr=0.0, warmup_steps=10)
    assert timed.lr_at(4, timed.fraction_done(4, 1.0)) == 0.5               # warmup: 5 / 10
    assert timed.lr_at(500, timed.fraction_done(500, 75.0)) == \
        scheduled_lr("wsd", 500, 0.75, 1.0, 10, 0.0, 0.5) == pytest.approx(0.5)
    assert timed.lr_at(900, timed.fraction_done(900, 100.0)) == 0.0


def test_schedule_errors_name_the_problem():
    assert SCHEDULES == ("cosine", "wsd", "constant")
    with pytest.raises(ValueError, match="the wsd schedule needs total_steps"):
        lr_schedule("wsd", 1.0, warmup_steps=2)
    with pytest.raises(ValueError, match="decay_fraction"):
        lr_schedule("wsd", 1.0, total_steps=10, decay_fraction=0.0)
    with pytest.raises(ValueError, match="min_lr"):
        lr_schedule("wsd", 1.0, total_steps=10, min_lr=2.0)
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        scheduled_lr("linear", 5, 0.5, 1.0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_schedule("wsd", 1.0, total_steps=10)(-1)
