"""bench.timing: synchronised steps, min count AND min time, the time cap, and state threading."""

import threading
import time

import pytest

from bench.stats import latency_stats
from bench.timing import time_steps

SLEEP_S = 0.020


def test_a_slow_step_is_measured_at_its_true_duration():
    def step(state):
        time.sleep(SLEEP_S)
        return "y", state

    result = time_steps(step, None, lambda tree: None, warmup=1, min_iterations=10, min_time_s=0.0, max_time_s=5.0)
    p50 = latency_stats(result.step_s).latency_ms_p50
    assert 0.99 * SLEEP_S * 1e3 <= p50 <= 1.5 * SLEEP_S * 1e3  # sleep overshoots, never undershoots


class _AsyncWork:
    """A device-like result: the step returns at once, the work finishes SLEEP_S later."""

    def __init__(self):
        self.done = threading.Event()
        threading.Timer(SLEEP_S, self.done.set).start()


def test_asynchronous_work_is_timed_through_the_sync():
    syncs = []

    def sync(tree):
        outputs, _ = tree
        syncs.append(outputs)
        outputs.done.wait()

    result = time_steps(lambda s: (_AsyncWork(), s), None, sync, warmup=2, min_iterations=8, min_time_s=0.0,
                        max_time_s=5.0)
    assert len(syncs) == 2 + len(result.step_s)  # every step, warm-up included, is synchronised
    assert all(w.done.is_set() for w in syncs)
    assert min(result.step_s) >= 0.99 * SLEEP_S  # without the sync a step would take microseconds


def test_each_step_receives_the_state_the_previous_step_returned():
    seen = []

    def step(state):
        seen.append(state)
        return state * 10, state + 1

    result = time_steps(step, 0, lambda tree: None, warmup=3, min_iterations=7, min_time_s=0.0, max_time_s=5.0)
    assert seen == list(range(3 + 7))
    assert result.state == 10 and result.outputs == 90
    assert len(result.step_s) == 7


def test_both_the_minimum_count_and_the_minimum_time_are_met():
    fast = time_steps(lambda s: (None, s), None, lambda t: None, warmup=0, min_iterations=5, min_time_s=0.05,
                      max_time_s=5.0)
    assert len(fast.step_s) > 5 and sum(fast.step_s) >= 0.05  # time was the binding minimum

    def slow(s):
        time.sleep(0.01)
        return None, s

    counted = time_steps(slow, None, lambda t: None, warmup=0, min_iterations=12, min_time_s=0.01, max_time_s=5.0)
    assert len(counted.step_s) == 12  # count was the binding minimum
    assert not counted.capped


def test_max_time_caps_a_slow_step():
    def step(s):
        time.sleep(SLEEP_S)
        return None, s

    result = time_steps(step, None, lambda t: None, warmup=0, min_iterations=1000, min_time_s=0.0, max_time_s=0.1)
    assert result.capped
    assert 1 <= len(result.step_s) <= 8


def test_bad_settings_raise():
    with pytest.raises(ValueError):
        time_steps(lambda s: (None, s), None, lambda t: None, min_iterations=0)


class _FakeDeviceClock:
    """A device clock that reports a fixed device time per step and records when it was asked."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, []

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> float:
        self.calls.append("stop")
        return self.seconds


def test_a_device_timer_brackets_every_timed_step_and_only_those():
    clock = _FakeDeviceClock(0.004)
    result = time_steps(lambda s: ("y", s), None, lambda tree: None, warmup=2, min_iterations=5, min_time_s=0.0,
                        max_time_s=5.0, device_timer=clock)
    assert result.device_s == [0.004] * 5 and len(result.step_s) == 5
    assert clock.calls == ["start", "stop"] * 5  # warm-up steps are not on the device clock either
    assert time_steps(lambda s: ("y", s), None, lambda tree: None, warmup=0, min_iterations=2, min_time_s=0.0,
                      max_time_s=5.0).device_s is None
