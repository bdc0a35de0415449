"""bench.counters: every FLOP counter agrees with the analytic count, and none crashes a run.

Scope of each comparison (all in FLOPs = 2 x multiply-adds):
- analytic: `variants.analytic.macs_per_step` x 2, the matmul/conv part only (dense projections,
  attention scores/values or Performer features/state/readout, depthwise and pointwise convs, time
  reduction projections); norms and elementwise ops are not MACs.
- XLA cost analysis: its TOTAL, which also counts elementwise ops and reductions. At full size
  those are < 1% of the step, so the total must be within 5% of the analytic matmul/conv count
  (at toy sizes elementwise work is ~15% and this would not hold).
- FlopCounterMode: counts only matmul/conv/SDPA-family ops, i.e. the matmul/conv part; within 5%.
- fvcore (doubled, with our handlers): its matmul/conv/einsum/attention operators (its layer_norm
  count is excluded); within 5%.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import variants
from bench import counters
from bench.adapters import jax_adapter, torch_adapter
from bench.machine import resolve_device
from variants import analytic

TOLERANCE = 0.05
BATCH, CHUNK = 1, 6


def _analytic_flops(spec, batch=BATCH, chunk=CHUNK) -> int:
    return 2 * sum(analytic.macs_per_step(spec, batch, chunk).values())


def _prepare(adapter, framework, spec):
    return adapter.prepare(spec, batch=BATCH, chunk_frames=CHUNK, dtype="float32",
                           native_device=resolve_device(framework, "cpu"), mode="jit" if framework == "jax" else "eager",
                           seed=0, precision="highest")


# ---- agreement on every registered variant ---------------------------------------------------------
def shallow(spec):
    """The variant at full width with 4 blocks: every kind of block it has (conv-only, attention),
    its attention kind and both rates, in a third of the build and compile time. The second pass
    is dropped: a first-pass step never runs it."""
    return spec.replace(num_blocks=4, conv_only_blocks=min(spec.conv_only_blocks, 2),
                        reductions=tuple((min(p, 3), f) for p, f in spec.reductions), second_pass=None)


def _check_xla_and_flop_counter_mode(name, spec):
    expected = _analytic_flops(spec)

    xla = _prepare(jax_adapter, "jax", spec).count_flops()["xla"]
    assert xla.flops is not None, xla.reason
    assert xla.flops == pytest.approx(expected, rel=TOLERANCE), f"XLA total vs analytic matmul/conv for {name}"
    assert xla.flops >= 0.99 * expected  # XLA sees every MAC plus elementwise work

    torch_session = _prepare(torch_adapter, "torch", spec)  # eager: its step is the module's own
    fcm = counters.flop_counter_mode_count(lambda: torch_session.step(torch_session.initial_state()))
    assert fcm.flops is not None, fcm.reason
    assert fcm.flops == pytest.approx(expected, rel=TOLERANCE), f"FlopCounterMode vs analytic for {name}"


@pytest.mark.parametrize("name", variants.names())
def test_every_variant_xla_and_flop_counter_mode_agree_with_analytic_within_5_percent(name):
    _check_xla_and_flop_counter_mode(name, shallow(variants.get(name).spec))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baseline", "practical"])
def test_full_size_counters_agree_with_analytic_within_5_percent(name):
    spec = variants.get(name).spec
    _check_xla_and_flop_counter_mode(name, spec)
    fv = _prepare(torch_adapter, "torch", spec).count_flops()["fvcore"]
    assert fv.flops is not None, fv.reason
    assert fv.matmul_flops == pytest.approx(_analytic_flops(spec), rel=TOLERANCE)
    assert fv.flops >= fv.matmul_flops  # its total adds the layer norms


# ---- handlers for the ops the tools are blind to ------------------------------------------------
class _Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class _Einsum(torch.nn.Module):
    def forward(self, a, b):
        return torch.einsum("bthm,bthd->bhmd", a, b)


class _Depthwise(torch.nn.Module):
    def forward(self, x, w):
        return F.conv1d(x, w, groups=x.shape[1])


def test_sdpa_is_counted_by_both_torch_counters():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    expected = 2 * 2 * 3 * 5 * 7 * (8 + 4)  # QK^T and AV
    fv = counters.fvcore_count(_Attention(), (q, k, v))
    assert fv.flops == expected and fv.matmul_flops == expected
    fcm = counters.flop_counter_mode_count(lambda: F.scaled_dot_product_attention(q, k, v))
    assert fcm.flops == expected  # the CPU flash kernel alone would count 0


def test_einsum_and_depthwise_conv_are_exact():
    a, b = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 6)
    expected = 2 * (2 * 5 * 3 * 4 * 6)
    assert counters.fvcore_count(_Einsum(), (a, b)).flops == expected
    assert counters.flop_counter_mode_count(lambda: torch.einsum("bthm,bthd->bhmd", a, b)).flops == expected
    x, w = torch.randn(2, 16, 10), torch.randn(16, 1, 4)
    expected = 2 * (2 * 16 * 7 * 4)  # out [2, 16, 7], one MAC per kernel tap
    assert counters.fvcore_count(_Depthwise(), (x, w)).flops == expected
    assert counters.flop_counter_mode_count(lambda: F.conv1d(x, w, groups=16)).flops == expected


def test_einsum_with_three_operands_uses_the_optimal_path():
    macs = counters._einsum_macs("ij,jk,kl->il", [[8, 16], [16, 32], [32, 4]])
    assert 0 < macs <= 8 * 16 * 32 + 8 * 32 * 4


# ---- never crash ---------------------------------------------------------------------------------
class _FakeCompiled:
    def __init__(self, analysis):
        self.analysis = analysis

    def cost_analysis(self):
        if isinstance(self.analysis, Exception):
            raise self.analysis
        return self.analysis


@pytest.mark.parametrize("analysis", [
    {"flops": 100.0, "transcendentals": 7.0, "bytes accessed": 64.0},
    [{"flops": 100.0, "transcendentals": 7.0, "bytes accessed": 64.0}],
])
def test_xla_cost_analysis_dict_or_list_of_dicts(analysis):
    count = counters.xla_count(_FakeCompiled(analysis))
    assert (count.flops, count.transcendentals, count.bytes_accessed, count.reason) == (100, 7, 64, None)


@pytest.mark.parametrize("analysis", [None, [], {}, {"flops": -1.0}, RuntimeError("no cost model\nmore")])
def test_xla_without_cost_analysis_gives_none_and_a_reason(analysis):
    count = counters.xla_count(_FakeCompiled(analysis))
    assert count.flops is None and count.matmul_flops is None
    assert count.reason.startswith("xla could not count") and "\n" not in count.reason


def test_torch_counters_that_fail_give_none_and_a_reason():
    def boom():
        raise RuntimeError("unsupported op")

    fcm = counters.flop_counter_mode_count(boom)
    assert fcm.flops is None and "unsupported op" in fcm.reason

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            return {"not": object()}

    fv = counters.fvcore_count(Untraceable(), (torch.randn(2),))
    assert fv.flops is None and fv.reason.startswith("fvcore could not count")


def test_real_jax_compiled_step_is_counted():
    import jax
    import jax.numpy as jnp

    a = jnp.ones((8, 16))
    compiled = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(a, jnp.ones((16, 4))).compile()
    count = counters.xla_count(compiled)
    assert count.flops is not None and count.flops >= 2 * 8 * 16 * 4
    assert math.isclose(count.flops, 2 * 8 * 16 * 4, rel_tol=0.1)
