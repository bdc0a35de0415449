"""Framework-neutral timing loop for a streaming step: warm up, then time synchronised steps.

The caller supplies `step(state) -> (outputs, new_state)` (the input chunk is closed over) and
`sync(tree)`, which must block until every array in `tree` is computed (JAX block_until_ready,
CUDA synchronize, torch_xla's own sync). Each timed step is followed by its sync, so a step's time
includes its device work, and the state one step returns is the state the next one receives, as in
real streaming (a donated JAX buffer is never passed twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

Step = Callable[[Any], tuple[Any, Any]]


@dataclass
class TimingResult:
    step_s: list[float]  # one entry per timed step, in order
    outputs: Any  # the last step's outputs (synchronised)
    state: Any  # the state the last step returned
    capped: bool = False  # stopped by max_time_s before min_iterations / min_time_s were met
    device_s: list[float] | None = None  # the same steps on the device's own clock, where it has one


class DeviceTimer(Protocol):
    """A device's own clock around a step (CUDA events): `start()` before the step is launched,
    `stop()` after its sync, returning the device time between them in seconds."""

    def start(self) -> None: ...
    def stop(self) -> float: ...


def time_steps(step: Step, state: Any, sync: Callable[[Any], Any], *, warmup: int = 3, min_iterations: int = 20,
               min_time_s: float = 1.0, max_time_s: float = 10.0,
               clock: Callable[[], float] = time.perf_counter, device_timer: DeviceTimer | None = None) -> TimingResult:
    """Run `warmup` untimed steps, then time steps until BOTH `min_iterations` steps and `min_time_s`
    seconds of step time are reached, or until `max_time_s` seconds of timing have passed (at least
    one step is always timed). Returns the raw per-step seconds: wall clock, and with `device_timer`
    the device's own time of each step as well (launch gaps it does not see are in the wall time)."""
    if warmup < 0 or min_iterations < 1 or min_time_s < 0 or max_time_s <= 0:
        raise ValueError(f"bad timing settings: warmup={warmup}, min_iterations={min_iterations}, "
                         f"min_time_s={min_time_s}, max_time_s={max_time_s}")
    outputs = None
    for _ in range(warmup):
        outputs, state = step(state)
        sync((outputs, state))

    step_s: list[float] = []
    device_s: list[float] | None = [] if device_timer is not None else None
    total = 0.0
    start = clock()
    capped = False
    while True:
        if device_timer is not None:
            device_timer.start()
        t0 = clock()
        outputs, state = step(state)
        sync((outputs, state))
        t1 = clock()
        if device_timer is not None:
            device_s.append(device_timer.stop())
        step_s.append(t1 - t0)
        total += t1 - t0
        if len(step_s) >= min_iterations and total >= min_time_s:
            break
        if t1 - start >= max_time_s:
            capped = True
            break
    return TimingResult(step_s=step_s, outputs=outputs, state=state, capped=capped, device_s=device_s)
