"""Both frameworks, every variant: streaming == forward, JAX == PyTorch, counts == analytic."""

import math

import numpy as np
import pytest

import variants
from variants import analytic
from variants.state import array_leaves, named_arrays
from tiny import stream, tiny_variants

TINY = tiny_variants()
SCHEDULES = {
    "ones": [1] * 40,
    "twos": [2] * 20,
    "odd": [3, 5, 7, 1, 11, 9, 4],  # 40 frames, ends on a partial chunk
    "larger_than_context": [17, 23],
    "single": [40],
}
TOL = 1e-4


@pytest.fixture(scope="module")
def built():
    """Both models of every tiny variant on the test device (conftest.TEST_DEVICE; the CPU here)."""
    from bench.machine import resolve_device
    from conftest import TEST_DEVICE

    out = {}
    for name, spec in TINY.items():
        jax_enc = variants.build(spec, "jax", seed=1, device=resolve_device("jax", TEST_DEVICE))
        torch_enc = variants.build(spec, "torch", seed=2, device=resolve_device("torch", TEST_DEVICE))
        torch_enc.load_weights(jax_enc.weights())  # different seeds: parity must come from load_weights
        out[name] = (jax_enc, torch_enc)
    return out




def _features(spec, frames=40, batch=2, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, frames, spec.input_dim)).astype(np.float32)


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", list(TINY))
def test_streaming_equals_forward(built, name, framework, schedule):
    enc = built[name][0 if framework == "jax" else 1]
    x = _features(TINY[name])
    full = enc.forward(x)
    streamed = stream(enc, x, SCHEDULES[schedule])
    assert full.shape == (2, 40 // TINY[name].output_stride, TINY[name].model_dim)
    assert streamed.shape == full.shape  # no frame dropped or duplicated
    np.testing.assert_allclose(streamed, full, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(TINY))
def test_jax_equals_torch_on_shared_weights(built, name):
    jax_enc, torch_enc = built[name]
    x = _features(TINY[name], frames=37)
    y_jax, y_torch = jax_enc.forward(x), torch_enc.forward(x)
    assert 0.5 < y_jax.std() < 2.0  # unit-scale outputs, so the absolute tolerance means something
    np.testing.assert_allclose(y_torch, y_jax, atol=TOL, rtol=0)
    np.testing.assert_allclose(stream(torch_enc, x, [4, 9, 24]), stream(jax_enc, x, [4, 9, 24]), atol=TOL, rtol=0)
    if TINY[name].second_pass is not None:
        np.testing.assert_allclose(torch_enc.second_pass_forward(y_jax), jax_enc.second_pass_forward(y_jax),
                                   atol=TOL, rtol=0)


@pytest.mark.parametrize("name", list(TINY))
def test_same_seed_gives_same_weights_in_both_frameworks(name):
    jax_w = variants.build(TINY[name], "jax", seed=3).weights()
    torch_w = variants.build(TINY[name], "torch", seed=3).weights()
    assert jax_w.keys() == torch_w.keys()
    assert all(np.array_equal(jax_w[k], torch_w[k]) for k in jax_w)


@pytest.mark.parametrize("name", list(TINY))
def test_params_match_analytic(built, name):
    spec = TINY[name]
    for enc in built[name]:
        assert enc.num_params() == analytic.param_count(spec)
        assert sum(w.size for w in enc.weights().values()) == analytic.param_count(spec)


def _arrays(state) -> dict[str, tuple[tuple[int, ...], str]]:
    """path -> (shape, "int32" | "float") of the real state arrays, whichever the framework."""
    return {path: (tuple(a.shape), "int32" if str(a.dtype).endswith("int32") else "float")
            for path, a in named_arrays(state)}


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("name", list(TINY))
def test_state_bytes_are_the_real_state_arrays_and_the_analytic_count(built, name, framework):
    """The arrays init_state returns, and those a step returns (its time-reduction buffers part-full
    or not), are the spec's state: same paths, shapes and kinds, and state_bytes is their size."""
    spec = TINY[name]
    enc = built[name][0 if framework == "jax" else 1]
    expected = {path: (shape, kind) for path, (shape, kind, _) in analytic.state_shapes(spec, 3).items()}
    state = enc.init_state(3)
    x = _features(spec, frames=3 * spec.output_stride + 1, batch=3)
    for size in (0, 1, spec.output_stride, 2 * spec.output_stride):  # 0: the fresh state
        if size:
            _, state = enc.step(x[:, :size], state)
        assert _arrays(state) == expected
        real_bytes = sum(math.prod(a.shape) * a.dtype.itemsize for a in array_leaves(state))
        assert real_bytes == analytic.state_bytes(spec, 3)
    assert enc.state_bytes(3) == real_bytes


def test_state_kinds_follow_the_block_and_attention_kinds():
    # conv-only blocks keep no attention state; the Performer's does not grow with the left context
    kinds = analytic.state_bytes_breakdown
    assert kinds(TINY["conv_lower"], 1)["attention"] < kinds(TINY["baseline"], 1)["attention"]
    perf = TINY["performer"]
    assert kinds(perf.replace(left_context=500), 1) == kinds(perf, 1)


def test_jax_step_compiles_once_per_chunk_shape(built):
    jax_enc, _ = built["practical"]
    spec = TINY["practical"]
    chunk = spec.output_stride
    state = jax_enc.init_state(1)
    x = _features(spec, frames=chunk * 10, batch=1)
    before = jax_enc._step._cache_size()
    for i in range(10):
        _, state = jax_enc.step(x[:, i * chunk: (i + 1) * chunk], state)
    assert jax_enc._step._cache_size() - before == 1


def test_load_weights_rejects_wrong_names_and_shapes(built):
    jax_enc, torch_enc = built["baseline"]
    weights = jax_enc.weights()
    bad = dict(weights)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="missing"):
        torch_enc.load_weights(bad)
    name = next(iter(weights))
    with pytest.raises(ValueError, match="has shape"):
        jax_enc.load_weights({**weights, name: np.zeros((1, 1), np.float32)})


@pytest.mark.parametrize("name", variants.names())
def test_full_size_parameter_and_state_counts_match_analytic(name):
    """Full-size models, shapes only (no weights drawn): both frameworks equal the analytic formula."""
    import jax
    import jax.numpy as jnp
    import torch

    from variants import jax_model, torch_model

    spec = variants.get(name).spec
    module = torch_model.Encoder(spec)
    assert sum(p.numel() for p in module.parameters()) == analytic.param_count(spec)
    with torch.device("meta"):
        state = torch_model.Encoder(spec).init_state(4)
    assert sum(t.numel() * t.element_size() for t in array_leaves(state)) == analytic.state_bytes(spec, 4)
    flax_module = jax_model.Encoder(spec)
    dummy = jnp.zeros((1, spec.output_stride, spec.input_dim))
    shapes = jax.eval_shape(lambda: flax_module.init(jax.random.PRNGKey(0), dummy, method=jax_model.Encoder.init_all))
    assert sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(shapes)) == analytic.param_count(spec)


def test_baseline_size_matches_the_paper():
    spec = variants.get("baseline").spec
    params = analytic.param_count(spec)
    assert abs(params - 120e6) / 120e6 < 0.05  # paper: ~120M parameters
    frames_per_step = 6 // spec.output_stride  # a 60 ms step completes two 30 ms frames
    flops_per_frame = 2 * sum(analytic.macs_per_step(spec, 1, 6).values()) / frames_per_step
    assert abs(flops_per_frame - 247e6) / 247e6 < 0.05  # paper: ~247M FLOPs per frame


@pytest.mark.parametrize("name", ["baseline", "practical"])
def test_full_size_streaming_equals_forward(name):
    spec = variants.get(name).spec
    x = _features(spec, frames=48, batch=1)
    for framework in ("jax", "torch"):
        enc = variants.build(name, framework)
        full = enc.forward(x)
        np.testing.assert_allclose(stream(enc, x, [6] * 8), full, atol=TOL, rtol=0)


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("name", ["baseline", "practical"])
def test_bfloat16_state_keeps_its_dtype_and_halves_its_bytes(name, framework):
    spec = TINY[name]
    enc = variants.build(spec, framework, dtype="bfloat16")
    state = enc.init_state(2)
    x = _features(spec, frames=spec.output_stride * 2)
    y, new_state = enc.step(x, state)
    assert np.isfinite(y).all()
    if framework == "jax":
        import jax

        dtypes = [(a.dtype, b.dtype) for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(new_state))]
        assert all(a == b for a, b in dtypes)
    assert enc.state_bytes(2) == analytic.state_bytes(spec, 2, dtype_bytes=2)


def test_build_takes_a_native_device_not_a_name():
    with pytest.raises(TypeError, match="native device"):
        variants.build(TINY["baseline"], "torch", device="cpu")
