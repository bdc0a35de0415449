"""Framework-neutral pieces of the streaming state."""

from dataclasses import dataclass
from typing import Any


@dataclass
class StackBuffer:
    """Frames a time-reduction layer has received but not yet stacked.

    frames: [batch, factor-1, dim], always allocated (so its bytes are the worst case); the first
    `count` are real. `count` is a Python int: in JAX it is static pytree metadata, so each phase
    compiles once and the number of frames a chunk emits is known at trace time.
    """

    frames: Any
    count: int
