"""ONNX Runtime, the third framework: every variant exported from the PyTorch model agrees with it
(full forward and streaming, on several chunk schedules), its export is cached, int8 stays near float32,
and its FLOPs counted from the graph equal the analytic count.

Each graph is an export of a few seconds, so the schedules here are the ones that exercise distinct
shapes cheaply: one chunk, chunks longer than the left context, and (for two variants) 2-frame chunks
whose time-reduction phases include steps where a block receives no frame."""

import os
import time

import numpy as np
import pytest

import variants
from bench import counters
from bench.machine import DeviceUnavailableError, resolve_device
from tiny import stream, tiny_variants
from variants import analytic, onnx_encoder, torch_model
from variants.build import ONNX_CACHE_LIMIT_ENV, ONNX_CACHE_LIMIT_GB, onnx_cache_limit_bytes
from variants.onnx_encoder import phase
from variants.state import array_leaves
from variants.torch_encoder import TorchEncoder

TINY = tiny_variants()
TOL = 1e-4
SCHEDULES = {"single": [40], "larger_than_context": [17, 23]}
PHASED = ("baseline", "practical_cascade")  # variants also streamed in 2-frame chunks (many phases)
INT8_RMS_BOUND = 0.08  # int8 vs float32 outputs, RMS error over RMS output (tiny models: 0.03-0.04 measured)


def _device():
    """ONNX Runtime's device for the tests: the test device, or the CPU where that is a TPU."""
    from conftest import TEST_DEVICE

    return resolve_device("onnxruntime", TEST_DEVICE if TEST_DEVICE != "tpu" else "cpu")


@pytest.fixture(scope="module")
def built():
    """The PyTorch and ONNX Runtime encoders of every tiny variant, sharing weights (different seeds:
    the parity must come from load_weights)."""
    device = _device()
    out = {}
    for name, spec in TINY.items():
        torch_enc = variants.build(spec, "torch", seed=1)
        ort_enc = variants.build(spec, "onnxruntime", seed=2, device=device)
        ort_enc.load_weights(torch_enc.weights())
        out[name] = (torch_enc, ort_enc)
    return out


def _frames(spec, batch=2, frames=40):
    return np.random.default_rng(3).standard_normal((batch, frames, spec.input_dim), np.float32)




@pytest.mark.parametrize("name", list(TINY))
def test_onnxruntime_equals_torch_forward_and_streaming(built, name):
    torch_enc, ort_enc = built[name]
    x = _frames(TINY[name])
    expected = torch_enc.forward(x)
    np.testing.assert_allclose(ort_enc.forward(x), expected, atol=TOL, rtol=0)
    for schedule in SCHEDULES.values():
        streamed = stream(ort_enc, x, schedule)
        np.testing.assert_allclose(streamed, expected[:, : streamed.shape[1]], atol=TOL, rtol=0)
    assert ort_enc.num_params() == analytic.param_count(TINY[name])
    assert ort_enc.state_bytes(2) == analytic.state_bytes(TINY[name], 2, 4)


@pytest.mark.parametrize("name", PHASED)
def test_onnxruntime_streams_through_every_time_reduction_phase(built, name):
    torch_enc, ort_enc = built[name]
    x = _frames(TINY[name])
    streamed = stream(ort_enc, x, [2] * 20)
    expected = torch_enc.forward(x)
    np.testing.assert_allclose(streamed, expected[:, : streamed.shape[1]], atol=TOL, rtol=0)
    phases = {key[2] for key in ort_enc._graphs if key[0] == "step" and key[1][0] == 2}
    assert len(phases) >= 3  # the 3x input stacking alone cycles through 3 buffer counts


def test_second_pass_equals_torch(built):
    torch_enc, ort_enc = built["practical_cascade"]
    y = np.random.default_rng(4).standard_normal((2, 8, TINY["practical_cascade"].model_dim), np.float32)
    np.testing.assert_allclose(ort_enc.second_pass_forward(y), torch_enc.second_pass_forward(y), atol=TOL, rtol=0)


def test_export_is_cached_by_weights(built):
    spec = TINY["practical"]
    torch_enc, ort_enc = built["practical"]
    x = _frames(spec)[:, :6]
    ort_enc.step(x, ort_enc.init_state(2))  # exported now (or by an earlier test)

    again = variants.build(spec, "onnxruntime", seed=2)
    again.load_weights(torch_enc.weights())
    again.step(x, again.init_state(2))
    assert [g.exported for g in again._graphs.values()] == [False]  # the same graph, loaded from disk

    other = variants.build(spec, "onnxruntime", seed=5)  # other weights: another graph
    other.step(x, other.init_state(2))
    assert [g.exported for g in other._graphs.values()] == [True]


def test_a_graph_loaded_from_the_cache_is_marked_used(built):
    spec = TINY["practical"]
    torch_enc, _ = built["practical"]
    x = _frames(spec)[:, :6]
    first = variants.build(spec, "onnxruntime", seed=2)
    first.load_weights(torch_enc.weights())
    graph = first.step_graph(x.shape, first.init_state(2))
    os.utime(graph.path, (1_000_000, 1_000_000))  # last used in 1970
    again = variants.build(spec, "onnxruntime", seed=2)
    again.load_weights(torch_enc.weights())
    again.step(x, again.init_state(2))
    assert [g.exported for g in again._graphs.values()] == [False]
    assert time.time() - graph.path.stat().st_mtime < 600  # prune_cache now keeps it before older ones


def _cached(folder, stem, sizes, used):
    for suffix, size in sizes.items():
        path = folder / f"{stem}{suffix}"
        path.write_bytes(b"x" * size)
        os.utime(path, (used, used))


def test_the_export_cache_deletes_the_graphs_used_longest_ago_down_to_its_bound(tmp_path):
    now = 1_000_000_000.0
    hour = onnx_encoder.CACHE_IN_USE_S
    _cached(tmp_path, "step-old", {".onnx": 400, ".weights.json": 10}, now - 30 * hour)
    _cached(tmp_path, "step-older", {".onnx": 300}, now - 40 * hour)
    _cached(tmp_path, "step-mid", {".onnx": 200}, now - 20 * hour)
    _cached(tmp_path, "step-new", {".onnx": 500}, now - 0.5 * hour)  # in use: never deleted
    (tmp_path / "tmpdir").mkdir()  # an export being written (a partial file in its own folder): left alone

    deleted = onnx_encoder.prune_cache(tmp_path, limit_bytes=800, now=now)
    # 1410 bytes: the oldest two groups (300, then 410 with the graph's companion) bring it to 700
    assert sorted(p.name for p in deleted) == ["step-old.onnx", "step-old.weights.json", "step-older.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-mid.onnx", "step-new.onnx", "tmpdir"]

    assert onnx_encoder.prune_cache(tmp_path, limit_bytes=100, now=now) == [tmp_path / "step-mid.onnx"]
    assert [p.name for p in tmp_path.glob("*.onnx")] == ["step-new.onnx"]  # over the bound, but in use
    assert onnx_encoder.prune_cache(tmp_path / "absent", limit_bytes=0, now=now) == []


def test_the_export_cache_bound_is_read_from_the_environment(monkeypatch):
    env = ONNX_CACHE_LIMIT_ENV
    monkeypatch.delenv(env, raising=False)
    assert onnx_cache_limit_bytes() == ONNX_CACHE_LIMIT_GB * 1e9
    monkeypatch.setenv(env, "2.5")
    assert onnx_cache_limit_bytes() == 2.5e9
    monkeypatch.setenv(env, "0")
    assert onnx_cache_limit_bytes() == float("inf")
    monkeypatch.setenv(env, "lots")
    with pytest.raises(ValueError, match="BENCH_ONNX_CACHE_GB='lots' is not a number of GB"):
        onnx_cache_limit_bytes()


def test_initial_weights_are_named_by_their_seed_and_loaded_ones_by_their_values(built):
    spec = TINY["practical"]
    x = _frames(spec)[:, :6]
    first = variants.build(spec, "onnxruntime", seed=11)
    first.step(x, first.init_state(2))
    same_seed = variants.build(spec, "onnxruntime", seed=11)
    same_seed.step(x, same_seed.init_state(2))
    assert [g.exported for g in same_seed._graphs.values()] == [False]  # no weights hashed, none exported

    same_seed.load_weights(built["practical"][0].weights())  # other values under the same seed
    key = ("step", x.shape, phase(same_seed.init_state(2)))
    assert same_seed._file_key(key, "float32") != first._file_key(key, "float32")
    np.testing.assert_allclose(same_seed.step(x, same_seed.init_state(2))[0],
                               built["practical"][1].step(x, built["practical"][1].init_state(2))[0], atol=TOL, rtol=0)


def test_initial_weights_are_drawn_only_when_a_graph_is_exported_or_they_are_read(monkeypatch):
    spec = TINY["practical"]
    x = _frames(spec)[:, :6]
    exporter = variants.build(spec, "onnxruntime", seed=12)
    exporter.step(x, exporter.init_state(2))  # exported now, or loaded from the cache
    reference = variants.build(spec, "torch", seed=12)
    drawn = []
    original = TorchEncoder._load_initial_weights
    monkeypatch.setattr(TorchEncoder, "_load_initial_weights", lambda self, seed: (drawn.append(seed), original(self, seed)))
    cached = variants.build(spec, "onnxruntime", seed=12)
    y, _ = cached.step(x, cached.init_state(2))
    assert [g.exported for g in cached._graphs.values()] == [False] and drawn == []  # nothing drawn for a cached graph
    np.testing.assert_allclose(y, reference.step(x, reference.init_state(2))[0], atol=TOL, rtol=0)
    weights = cached.weights()  # read: drawn now, the same values
    assert drawn == [12] and weights.keys() == reference.weights().keys()
    assert all(np.array_equal(weights[k], v) for k, v in reference.weights().items())


def test_a_graphs_weight_bytes_are_read_once_and_kept_beside_it(built, monkeypatch):
    spec = TINY["practical"]
    _, enc = built["practical"]
    graph = enc.step_graph((1, 6, spec.input_dim), enc.init_state(1))
    summary = graph.path.with_suffix(".weights.json")
    summary.unlink(missing_ok=True)
    nbytes, quantized = enc.graph_weights(graph)
    assert summary.exists() and quantized is None
    assert nbytes >= 4 * analytic.param_count(spec) * 0.9  # the float32 weights, give or take folded constants

    def parse(*_):
        raise AssertionError("parsed the graph again")

    monkeypatch.setattr(onnx_encoder.OnnxEncoder, "_read_graph_weights", parse)
    assert enc.graph_weights(graph) == (nbytes, None)
    monkeypatch.undo()
    summary.write_text("{not json")  # a damaged summary is read again from the graph, and replaced
    assert enc.graph_weights(graph) == (nbytes, None)
    assert summary.read_text().startswith("{\"bytes\"")


def test_int8_weights_keep_7_bits_only_on_x86_cpus_without_vnni():
    from variants.onnx_encoder import reduce_range_for

    assert reduce_range_for("x86_64", {"avx2", "fma"})  # u8 x s8 pairs summed in 16 bits: saturation
    assert not reduce_range_for("x86_64", {"avx2", "avx512f", "avx512_vnni"})
    assert not reduce_range_for("x86_64", {"avx2", "avx_vnni"})
    assert reduce_range_for("AMD64", None)  # flags unknown
    assert not reduce_range_for("aarch64", None)


def test_int8_quantises_the_matmul_weights_and_stays_near_float32(built):
    spec = TINY["practical"]
    torch_enc, float_enc = built["practical"]
    int8_enc = variants.build(spec, "onnxruntime", dtype="int8")
    int8_enc.load_weights(torch_enc.weights())
    x = _frames(spec, batch=1, frames=36)
    reference, quantised = stream(float_enc, x, [6] * 6), stream(int8_enc, x, [6] * 6)
    error = np.sqrt(np.mean((quantised - reference) ** 2) / np.mean(reference ** 2))
    assert 0 < error < INT8_RMS_BOUND  # not bit-identical (something was quantised), and close

    state = int8_enc.init_state(1)
    graph = int8_enc.step_graph((1, 6, spec.input_dim), state)
    float_graph = float_enc.step_graph((1, 6, spec.input_dim), float_enc.init_state(1))
    (int8_bytes, summary), (float_bytes, none) = int8_enc.graph_weights(graph), float_enc.graph_weights(float_graph)
    assert int8_bytes < 0.5 * float_bytes and none is None
    # every Dense layer of the first pass, and the Performer's feature projection for queries and keys
    performers = sum(isinstance(m, torch_model.PerformerAttention) for m in torch_enc.module.modules())
    dense = sum(isinstance(m, torch_model.Dense) for m in torch_enc.module.modules())
    assert summary.startswith(f"{dense + 2 * performers} of {dense + 2 * performers} MatMuls with weights on int8")
    assert ("7-bit (reduce_range" in summary) == onnx_encoder.int8_reduce_range()  # the record says which


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_onnx_graph_flops_equal_the_analytic_count(built, dtype):
    spec = TINY["baseline"]
    torch_enc, _ = built["baseline"]
    enc = variants.build(spec, "onnxruntime", dtype=dtype)
    enc.load_weights(torch_enc.weights())
    state = enc.init_state(2)
    count = counters.onnx_count(enc.step_graph((2, 6, spec.input_dim), state).path, batch=2)
    matrix_products = sum(analytic.macs_per_step(spec, 2, 6).values()) - analytic.depthwise_macs_per_step(spec, 2, 6)
    assert count.flops == 2 * matrix_products
    assert count.reason is None and count.by_op


def test_one_step_graph_with_a_free_batch_serves_every_batch(built):
    spec = TINY["practical"]
    torch_enc, ort_enc = built["practical"]
    graphs = set()
    for batch in (1, 3):
        x = _frames(spec, batch=batch)[:, :6]
        state = ort_enc.init_state(batch)
        graphs.add(id(ort_enc.step_graph(x.shape, state)))
        np.testing.assert_allclose(ort_enc.step(x, state)[0], torch_enc.step(x, torch_enc.init_state(batch))[0],
                                   atol=TOL, rtol=0)
        count = counters.onnx_count(ort_enc.step_graph(x.shape, state).path, batch=batch)
        matrix_products = sum(analytic.macs_per_step(spec, batch, 6).values()) - analytic.depthwise_macs_per_step(spec, batch, 6)
        assert count.flops == 2 * matrix_products
    assert len(graphs) == 1  # one session for both batches, loaded once


def test_onnx_count_says_why_it_cannot_count(tmp_path):
    bad = tmp_path / "not-a-model.onnx"
    bad.write_bytes(b"not protobuf")
    count = counters.onnx_count(bad)
    assert count.flops is None and count.reason.startswith("onnx could not count")


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_int8_is_onnxruntime_only(framework):
    with pytest.raises(ValueError, match="runs in onnxruntime only"):
        variants.build(TINY["practical"], framework, dtype="int8")
    with pytest.raises(ValueError, match="onnxruntime runs float32"):
        variants.build(TINY["practical"], "onnxruntime", dtype="bfloat16")


def test_phase_is_the_buffer_counts(built):
    _, ort_enc = built["practical_cascade"]
    state = ort_enc.init_state(1)
    assert phase(state) == (0, 0)  # the input stacking and the one block that reduces
    _, state = ort_enc.step(_frames(TINY["practical_cascade"], batch=1)[:, :4], state)
    assert phase(state) == (1, 1)  # 4 frames: one stacked group of 3 and 1 left; 1 of 2 at the next rate


def test_no_gpu_here_is_a_one_line_error():
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("this onnxruntime has the CUDA execution provider")
    except ImportError:
        pass
    with pytest.raises(DeviceUnavailableError, match="not available to onnxruntime"):
        resolve_device("onnxruntime", "gpu")


def test_session_threads_spin_within_a_run_only(built):
    """Spinning through a step's barriers is 10-30% faster; spinning on after a run slows the next
    worker in interleaved rounds (README: "Which runtime to read")."""
    options = built["practical"][1].session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


@pytest.mark.parametrize("name", PHASED)
def test_a_timed_step_runs_a_binding_made_beforehand_and_equals_the_encoders_step(name):
    """The harness's step (onnxruntime_adapter.BoundStep) reads and writes buffers bound once: through
    every phase (3-frame chunks, a 2x reduction) it gives exactly the encoder's own step, once warm it
    binds nothing (io_binding refused), and a fresh stream after it starts over."""
    from bench.adapters import load

    session = load("onnxruntime").prepare(TINY[name], batch=2, chunk_frames=3, dtype="float32", mode="session",
                                          seed=0, precision="highest", native_device=_device())

    def arrays(y, state):
        return [y.numpy(), *(a.numpy() for a in array_leaves(state))]

    expected, state = [], session.initial_state()
    for _ in range(8):
        y, state = session.encoder.step_native(session.x, state)
        expected.append(arrays(y, state))

    def check(steps, state):
        for want in steps:
            y, state = session.step(state)
            for got, ref in zip(arrays(y, state), want, strict=True):
                np.testing.assert_array_equal(got, ref)
        return state

    state = check(expected[:4], session.initial_state())

    def refuse():
        raise AssertionError("a warm step made a binding")

    for graph in session.graphs.values():
        graph.session.io_binding = refuse
    check(expected[4:], state)
    for graph in session.graphs.values():
        del graph.session.io_binding
    check(expected[:2], session.initial_state())
