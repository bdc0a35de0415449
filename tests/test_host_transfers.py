"""No host work in a timed step: a step (and a timed second-pass segment) creates no tensor from numpy or
Python data, for every variant in both frameworks.

On a GPU or TPU such a tensor is a blocking host-to-device copy inside the timed step. On the CPU
(the test device unless scripts/device-check.sh sets BENCH_TEST_DEVICE) there is no copy to see, so
the guards fail on the act itself: PyTorch's tensor factories that take
host data (torch.tensor, as_tensor, asarray, from_numpy) raise, and JAX runs under
`jax.transfer_guard("disallow_explicit")`, which refuses every transfer between host and device,
even a `device_put`.
"""

import contextlib

import jax
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import variants
from bench.adapters import load
from bench.machine import resolve_device
from conftest import TEST_DEVICE
from tiny import tiny

HOST_FACTORIES = {"tensor", "as_tensor", "asarray"}


class HostTensorCreated(AssertionError):
    pass


class _NoHostTensors(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_FACTORIES and args and not isinstance(args[0], torch.Tensor):
            raise HostTensorCreated(f"torch.{name}({type(args[0]).__name__}) inside a timed step")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_tensors():
    """Raise on any PyTorch tensor made from numpy or Python data (from_numpy is not a torch function,
    so it is wrapped by hand)."""
    from_numpy = torch.from_numpy

    def refuse(array):
        raise HostTensorCreated(f"torch.from_numpy({type(array).__name__}) inside a timed step")

    torch.from_numpy = refuse
    try:
        with _NoHostTensors():
            yield
    finally:
        torch.from_numpy = from_numpy


def test_the_torch_guard_catches_each_host_factory():
    for make in (lambda: torch.as_tensor(np.ones(2)), lambda: torch.tensor([1.0]),
                 lambda: torch.asarray(np.ones(2)), lambda: torch.from_numpy(np.ones(2))):
        with no_host_tensors(), pytest.raises(HostTensorCreated):
            make()
    with no_host_tensors():  # tensors made on the device from shapes are fine
        torch.arange(3) + torch.ones(3)


def test_the_jax_guard_catches_a_host_array():
    f = jax.jit(lambda x: x + 1)
    with jax.transfer_guard("disallow_explicit"), pytest.raises(Exception, match="[Dd]isallowed host-to-device"):
        f(np.ones(2, np.float32))
    with jax.transfer_guard("disallow_explicit"), pytest.raises(Exception, match="[Dd]isallowed"):
        f(jax.device_put(np.ones(2, np.float32)))


def _guard(framework):
    return jax.transfer_guard("disallow_explicit") if framework == "jax" else no_host_tensors()


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("name", variants.names())
def test_a_timed_step_does_no_host_work(name, framework):
    adapter = load(framework)
    session = adapter.prepare(tiny(variants.get(name).spec), batch=2, chunk_frames=3, dtype="float32",
                              native_device=resolve_device(framework, TEST_DEVICE), mode="jit" if framework == "jax" else "eager", seed=0,
                              precision="highest")
    state = session.initial_state()
    segment = session.second_pass_step()
    with _guard(framework):
        for _ in range(4):  # chunk 3 and a 2x reduction: both phases of the stacking buffer
            y, state = session.step(state)
            session.sync((y, state))
        if segment is not None:
            segment()
