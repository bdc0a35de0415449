"""Framework-neutral pieces of the streaming state: the time-reduction buffer, and walking a state tree."""

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator


@dataclass
class StackBuffer:
    """Frames a time-reduction layer has received but not yet stacked.

    frames: [batch, factor-1, dim], always allocated (so its bytes are the worst case); the first
    `count` are real. `count` is a Python int: in JAX it is static pytree metadata, so each phase
    compiles once and the number of frames a chunk emits is known at trace time.
    """

    frames: Any
    count: int


def _is_scalar(tree: Any) -> bool:
    return tree is None or isinstance(tree, (int, float, bool, str))


def named_arrays(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, array) for each array leaf of a state/output tree of dicts, tuples, lists and
    dataclasses, in the same order in both frameworks; ints and None are skipped. Paths read like
    variants.analytic.state_shapes': "blocks.3.stack.frames"."""
    if _is_scalar(tree):
        return
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (tuple, list)):
        items = enumerate(tree)
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        items = ((f.name, getattr(tree, f.name)) for f in dataclasses.fields(tree))
    else:
        yield path, tree
        return
    for key, value in items:
        yield from named_arrays(value, f"{path}.{key}" if path else str(key))


def array_leaves(tree: Any) -> Iterator[Any]:
    """The arrays of `named_arrays`, without their paths."""
    return (array for _, array in named_arrays(tree))


def map_arrays(fn: Callable[[Any], Any], tree: Any) -> Any:
    """The same tree with `fn` applied to each array leaf, in `array_leaves` order; ints and None kept."""
    if _is_scalar(tree):
        return tree
    if isinstance(tree, dict):
        return {key: map_arrays(fn, value) for key, value in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(map_arrays(fn, value) for value in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return dataclasses.replace(tree, **{f.name: map_arrays(fn, getattr(tree, f.name))
                                            for f in dataclasses.fields(tree)})
    return fn(tree)


def with_arrays(tree: Any, arrays: Iterable[Any]) -> Any:
    """The same tree with its array leaves replaced by `arrays`, in `array_leaves` order (a flat list of
    a step's outputs back into a state; a template's placeholders filled)."""
    it = iter(arrays)
    return map_arrays(lambda _: next(it), tree)


def state_nbytes(state: Any) -> int:
    """Bytes held by the arrays of a state tree (JAX and PyTorch arrays have `nbytes`, ONNX Runtime's
    OrtValues `tensor_size_in_bytes()`)."""
    return int(sum(a.nbytes if hasattr(a, "nbytes") else a.tensor_size_in_bytes() for a in array_leaves(state)))


MAX_PHASES = 16  # distinct phases a step is compiled, captured or exported for before giving up


def phase(state: Any) -> tuple[int, ...]:
    """The ints of a state tree, in `named_arrays` order: each time-reduction buffer's `count`. They fix
    the shapes inside a step, so a compiled or captured step is one program per phase (JAX's pytree
    metadata, a CUDA graph, an exported ONNX graph)."""
    if isinstance(tree := state, StackBuffer):
        return (tree.count,)
    if isinstance(tree, dict):
        return tuple(c for value in tree.values() for c in phase(value))
    if isinstance(tree, (tuple, list)):
        return tuple(c for value in tree for c in phase(value))
    return ()
