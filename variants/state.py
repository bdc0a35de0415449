"""Framework-neutral pieces of the streaming state."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator


@dataclass
class StackBuffer:
    """Frames a time-reduction layer has received but not yet stacked.

    frames: [batch, factor-1, dim], always allocated (so its bytes are the worst case); the first
    `count` are real. `count` is a Python int: in JAX it is static pytree metadata, so each phase
    compiles once and the number of frames a chunk emits is known at trace time.
    """

    frames: Any
    count: int


def array_leaves(tree: Any) -> Iterator[Any]:
    """Array leaves of a state/output tree of dicts, tuples, lists and dataclasses (ints skipped).

    Framework-neutral: the PyTorch encoder counts its state bytes with it, and the harness uses it
    on both frameworks' states."""
    if tree is None or isinstance(tree, (int, float, bool, str)):
        return
    if isinstance(tree, dict):
        for value in tree.values():
            yield from array_leaves(value)
    elif isinstance(tree, (tuple, list)):
        for value in tree:
            yield from array_leaves(value)
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        for f in dataclasses.fields(tree):
            yield from array_leaves(getattr(tree, f.name))
    else:
        yield tree
