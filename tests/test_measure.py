"""bench.measure: prepare -> bursts -> finish gives a complete record; failures are records, a missing device raises."""

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

import variants
from variants import analytic
from bench.config import MeasureSettings, load_config
from bench.machine import DeviceUnavailableError, available_devices
from bench import adapters
from bench import measure as measure_mod
from bench.measure import _variant_name, finish, measure, prepare
from bench.schema import DEFAULT_MODE, EXTRA_KEYS, RAW_STEP_KEY, RECORD_KEYS
from tiny import tiny

SETTINGS = MeasureSettings(profile=False, profile_steps=2, warmup_iterations=1, warmup_rounds=0, rounds=3, steps_per_round=2, round_warmup=1, min_time_s=0.0,
                           max_time_s=1.0, interval_target=0.0, timeout_s=60.0, prepare_workers=1, counters=True, second_pass=True,
                           roofline=True)
QUICK = load_config().quick
CASES = [("jax", "practical_cascade"), ("torch", "baseline"), ("onnxruntime", "practical_cascade")]  # performer +
# 2 rates + cascade; local attention


def _tiny(name):
    return tiny(variants.get(name).spec)


def _assert_complete(record):
    assert set(RECORD_KEYS) | set(EXTRA_KEYS) | {RAW_STEP_KEY} <= set(record)


@pytest.mark.parametrize("framework, name", CASES)
def test_tiny_spec_gives_a_complete_ok_record(framework, name, monkeypatch):
    monkeypatch.delenv("BENCH_WORKER", raising=False)
    spec = _tiny(name)
    r = measure(spec, framework, "cpu", 2, 6, settings=SETTINGS)
    _assert_complete(r)
    assert r["status"] == "ok", r["error"]
    assert r["error"] is None
    assert r["variant"] == "custom" and r["framework"] == framework and r["batch"] == 2 and r["chunk_frames"] == 6
    assert r["mode"] == DEFAULT_MODE[framework]

    # parameters and state: the model's arrays equal the spec's formulas
    assert r["params"] == r["params_analytic"] > 0
    assert r["state_bytes_measured"] == r["state_bytes"] > 0
    assert r["state_bytes_per_stream"] == r["state_bytes_attention"] + r["state_bytes_conv"] + r["state_bytes_time_reduction"]
    assert r["bytes_per_step"] == r["weight_bytes_first_pass"] + 2 * r["state_bytes"]
    assert r["flops_per_step"] == 2 * r["macs_per_step"]
    assert r["arithmetic_intensity"] == pytest.approx(r["flops_per_step"] / r["bytes_per_step"])

    # counters ran, each in its own column
    if framework == "jax":
        assert r["flops_per_step_xla"] >= r["flops_per_step"]
        assert r["flops_per_step_torch"] is None and r["flops_per_step_fvcore"] is None
    elif framework == "onnxruntime":
        # the graph's MatMul/Gemm shapes: every MAC but the depthwise convs' elementwise multiply-and-sum
        depthwise = analytic.depthwise_macs_per_step(spec, 2, 6)
        assert r["flops_per_step_onnx"] == r["flops_per_step"] - 2 * depthwise
        assert "intra_op_num_threads" in r["runtime_options"] and r["quantized"] is None
    else:
        assert r["flops_per_step_torch"] == pytest.approx(r["flops_per_step"], rel=0.05)
        assert r["flops_per_step_fvcore"] == pytest.approx(r["flops_per_step"], rel=0.05)

    # timing and what is derived from it: `rounds` bursts of `steps_per_round` steps, in this process
    assert r["rounds"] == 3 and r["steps_per_round"] == 2 and r["warmup_iterations"] == 1
    assert len(r[RAW_STEP_KEY]) == r["iterations"] == 6
    assert r["latency_ms_p50_ci_low"] <= r["latency_ms_p50"] <= r["latency_ms_p50_ci_high"]
    assert r["worker"] is None  # measured in this process, not in a worker
    assert 0 < r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
    assert r["latency_ms_p50"] == pytest.approx(1e3 * float(np.median(r[RAW_STEP_KEY])))
    audio_s = 6 * spec.input_frame_ms / 1000
    assert r["rtf"] == pytest.approx(r["latency_ms_p50"] / 1e3 / audio_s)
    assert r["audio_s_per_s"] == pytest.approx(2 / r["rtf"])
    assert r["roofline_bound_ms"] > 0 and 0 < r["roofline_fraction"] == pytest.approx(
        r["roofline_bound_ms"] / r["latency_ms_p50"])
    assert all(r[f"roofline_ms_{k}"] > 0 for k in ("tpu_v4", "tpu_v5e", "a100", "h100", "phone_soc"))
    assert r["threads"] >= 1 and r["version_jax"] and r["device_name"]
    if framework != "torch":
        assert r["compile_s"] > 0  # XLA compile; ONNX export or cache load and the sessions
    if spec.second_pass is not None:
        assert r["second_pass_macs_per_segment"] > 0 and r["second_pass_latency_ms_p50"] > 0
    assert r["measure_wall_s"] > 0


def _nan_build(monkeypatch):
    real_build = variants.build

    def build(*args, **kwargs):
        enc = real_build(*args, **kwargs)
        weights = enc.weights()
        name = next(k for k in weights if k.endswith("kernel"))
        weights[name] = np.full_like(weights[name], np.nan)
        enc.load_weights(weights)
        return enc

    monkeypatch.setattr(variants, "build", build)
    monkeypatch.setattr(adapters, "_last_built", None)  # an encoder an earlier test built is not reused


@pytest.mark.parametrize("framework, name", CASES)
def test_a_spec_that_produces_nan_is_a_failed_record(monkeypatch, framework, name):
    _nan_build(monkeypatch)
    r = measure(_tiny(name), framework, "cpu", 1, 6, settings=SETTINGS)
    _assert_complete(r)
    assert r["status"] == "failed"
    assert "NaN" in r["error"] and "\n" not in r["error"]
    assert r["latency_ms_p50"] is None and r[RAW_STEP_KEY] == []
    assert r["flops_per_step"] > 0  # what the spec alone says is still recorded


def test_an_exception_while_building_is_a_failed_record(monkeypatch):
    def build(*args, **kwargs):
        raise RuntimeError("out of memory\nstack trace")

    monkeypatch.setattr(variants, "build", build)
    r = measure(_tiny("baseline"), "jax", "cpu", 1, 6, settings=SETTINGS)
    assert r["status"] == "failed" and r["error"] == "RuntimeError: out of memory"


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_a_missing_device_raises(device):
    if device in available_devices()["jax"]:
        pytest.skip(f"jax has a {device} here")
    with pytest.raises(DeviceUnavailableError, match="available: cpu"):
        measure(_tiny("baseline"), "jax", device, 1, 6, settings=SETTINGS)


@pytest.mark.parametrize("kwargs", [dict(framework="jax", mode="eager"), dict(framework="mxnet"),
                                    dict(framework="torch", dtype="float16"), dict(framework="jax", batch=0)])
def test_invalid_arguments_raise_value_error(kwargs):
    args = dict(framework="jax", batch=1) | kwargs
    with pytest.raises(ValueError):
        measure(_tiny("baseline"), args.pop("framework"), "cpu", args.pop("batch"), 6, settings=SETTINGS, **args)


def test_bfloat16_bytes_follow_the_dtype():
    spec = _tiny("baseline")
    f32 = measure(spec, "jax", "cpu", 1, 6, settings=QUICK)
    bf16 = measure(spec, "jax", "cpu", 1, 6, dtype="bfloat16", settings=QUICK)
    assert bf16["status"] == "ok", bf16["error"]
    assert bf16["weight_bytes"] * 2 == f32["weight_bytes"]
    assert bf16["state_bytes"] == analytic.state_bytes(spec, 1, dtype_bytes=2) < f32["state_bytes"]
    assert bf16["state_bytes_measured"] == bf16["state_bytes"]  # the real bf16 arrays
    assert bf16["bytes_per_step"] == bf16["weight_bytes_first_pass"] + 2 * bf16["state_bytes"]


def test_a_registered_spec_is_recorded_under_its_name():
    assert _variant_name(variants.get("practical").spec) == "practical"
    assert _variant_name(_tiny("practical")) == "custom"


@pytest.mark.slow
def test_torch_compile_mode_is_measurable():
    spec = _tiny("baseline").replace(num_blocks=1, conv_only_blocks=0, reductions=((0, 3),))
    r = measure(spec, "torch", "cpu", 1, 6, mode="compile", settings=QUICK)
    assert r["status"] == "ok", r["error"]
    assert r["mode"] == "compile" and r["compile_s"] > 0 and math.isfinite(r["latency_ms_p50"])


def test_a_chunk_that_leaves_frames_in_a_buffer_compiles_every_phase_ahead():
    # 4 input frames against a 3x then 2x stacking: the buffers' frame counts cycle over steps, and
    # each count is its own JAX program; all are compiled before timing, none while timed.
    from bench.adapters import jax_adapter
    from bench.machine import resolve_device

    session = jax_adapter.prepare(_tiny("practical"), batch=1, chunk_frames=4, dtype="float32",
                                  native_device=resolve_device("jax", "cpu"), mode="jit", seed=0,
                                  precision="highest")
    assert len(session._compiled) > 1
    state = session.initial_state()
    compiled_before = dict(session._compiled)
    for _ in range(7):
        _, state = session.step(state)
    assert session._compiled == compiled_before


def test_a_jax_step_donates_the_state_it_adds_to_and_keeps_the_caches_it_shifts():
    # The Performer's running sums are updated where they lie (donated: the step consumes them); the
    # conv caches shift, and are not donated (one copy a step less). The step is the encoder's.
    from bench.adapters import jax_adapter
    from bench.machine import resolve_device
    from variants.state import named_arrays

    session = jax_adapter.prepare(_tiny("practical"), batch=2, chunk_frames=6, dtype="float32",
                                  native_device=resolve_device("jax", "cpu"), mode="jit", seed=0,
                                  precision="highest")
    enc = session.encoder
    in_place, rest = state = session.initial_state()
    leaf = lambda path: path.rsplit(".", 1)[1]  # noqa: E731
    assert {leaf(p) for p, _ in named_arrays(in_place)} == {"s", "z"}
    assert {leaf(p) for p, _ in named_arrays(rest)} & {"s", "z"} == set()
    assert dict(named_arrays(jax_adapter.merge_state(*state))).keys() == dict(named_arrays(enc.init_state(2))).keys()

    expected_y, expected_state = enc.step_fn(enc.params, session.x, enc.init_state(2))
    y, new_state = session.step(state)
    assert all(a.is_deleted() for _, a in named_arrays(in_place))
    assert not any(a.is_deleted() for _, a in named_arrays(rest))
    np.testing.assert_allclose(y, expected_y, atol=1e-5, rtol=0)
    got, expected = dict(named_arrays(jax_adapter.merge_state(*new_state))), dict(named_arrays(expected_state))
    assert got.keys() == expected.keys()
    for path, array in expected.items():  # the Performer's sums reach ~10: float32 rounding is relative
        np.testing.assert_allclose(got[path], array, atol=1e-5, rtol=1e-5)


def test_a_step_compiled_once_is_loaded_from_xlas_persistent_cache_by_the_next_session():
    from bench.adapters import jax_adapter
    from bench.machine import resolve_device

    def session():
        return jax_adapter.prepare(_tiny("conv_lower"), batch=3, chunk_frames=6, dtype="float32",
                                   native_device=resolve_device("jax", "cpu"), mode="jit", seed=0,
                                   precision="highest")

    session()
    again = session()
    assert again.runtime_options.startswith(f"XLA persistent compilation cache {os.environ['BENCH_XLA_CACHE']}")
    assert "program(s) loaded from it, 0 compiled" in again.runtime_options
    assert not again.runtime_options.startswith(f"XLA persistent compilation cache {os.environ['BENCH_XLA_CACHE']}: 0")


def _jax_session(spec, batch=1, chunk_frames=4, precision="highest"):
    from bench.adapters import jax_adapter
    from bench.machine import resolve_device

    return jax_adapter.prepare(spec, batch=batch, chunk_frames=chunk_frames, dtype="float32",
                               native_device=resolve_device("jax", "cpu"), mode="jit", seed=0, precision=precision)


def test_a_jax_step_traced_once_runs_from_its_exported_trace_without_building_the_model():
    # 4 frames a chunk against 3x then 2x stacking: several phases, each exported and loaded
    from variants.state import named_arrays

    spec = _tiny("practical").replace(ffn_dim=40)  # a spec of this test's own: nothing cached it before
    first, again = _jax_session(spec), _jax_session(spec)
    assert "the step traced and saved to step-" in first.runtime_options
    assert "the step's trace loaded from step-" in again.runtime_options
    assert "program(s) loaded from it, 0 compiled" in again.runtime_options  # the same programs as the first's
    assert again._encoder is None and len(again._compiled) == len(first._compiled) > 1
    assert again.num_params() == first.encoder.num_params() == analytic.param_count(spec)
    a, b = first.initial_state(), again.initial_state()
    for _ in range(7):
        (ya, a), (yb, b) = first.step(a), again.step(b)
        np.testing.assert_array_equal(np.asarray(ya), np.asarray(yb))
    for (path, x), (_, y) in zip(named_arrays(a), named_arrays(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=path)
    assert again.second_pass_step() is None and again._encoder is None  # no second pass: nothing built


def test_a_damaged_trace_file_is_traced_afresh_and_rewritten():
    from bench.adapters import jax_adapter

    spec = _tiny("conv_lower").replace(ffn_dim=44)
    path = Path(_jax_session(spec).runtime_options.split("saved to ")[1].split(" ")[0])
    path = jax_adapter.compile_cache_folder() / jax_adapter.TRACE_FOLDER / path
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00abc")
    assert "the step traced and saved to" in _jax_session(spec).runtime_options
    assert "the step's trace loaded from" in _jax_session(spec).runtime_options


def test_a_step_jax_cannot_export_is_traced_and_run_as_before(monkeypatch):
    from bench.adapters import jax_adapter

    def refuse(*args, **kwargs):
        raise NotImplementedError("no exporting this")

    monkeypatch.setattr(jax_adapter, "_export_phases", refuse)
    spec = _tiny("practical").replace(ffn_dim=36)
    session = _jax_session(spec)
    assert "the step traced (not exported: NotImplementedError: no exporting this)" in session.runtime_options
    enc = session.encoder
    expected, _ = enc.step_fn(enc.params, session.x, enc.init_state(1))
    np.testing.assert_allclose(np.asarray(session.step(session.initial_state())[0]), np.asarray(expected), atol=1e-5)
    assert not jax_adapter._trace_file(spec, 1, 4, "float32", "highest", session.compiler_options, "cpu").exists()


def test_the_trace_file_is_named_by_everything_that_decides_the_trace(monkeypatch):
    from bench.adapters import jax_adapter
    from bench.adapters.jax_adapter import _trace_file

    spec = _tiny("practical")
    args = dict(spec=spec, batch=1, chunk_frames=6, dtype="float32", precision="highest", compiler_options={},
                platform="cpu")
    base = _trace_file(**args)
    changed = [dict(spec=spec.replace(ffn_dim=64)), dict(batch=2), dict(chunk_frames=4), dict(dtype="bfloat16"),
               dict(precision="default"), dict(compiler_options={"xla_cpu_copy_insertion_use_region_analysis": True}),
               dict(platform="gpu")]
    names = {_trace_file(**{**args, **change}) for change in changed}
    assert base == _trace_file(**args) and base not in names and len(names) == len(changed)
    monkeypatch.setattr(jax_adapter, "_source_digest", lambda: "another revision of variants/ or of the adapter")
    assert _trace_file(**args) not in names | {base}
    monkeypatch.setenv("BENCH_XLA_CACHE", "off")
    assert _trace_file(**args) is None


def test_the_trace_cache_keeps_the_files_used_last_within_its_bound(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from bench.adapters import jax_adapter

    blob = SimpleNamespace(serialize=lambda: b"x" * 100)
    monkeypatch.setattr(jax_adapter, "TRACE_CACHE_MAX_BYTES", 450)
    for name in "abc":
        assert "saved to" in jax_adapter._save_traces(tmp_path / f"{name}.jaxexport", [blob, blob])
        time.sleep(0.01)  # mtimes apart
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jaxexport", "c.jaxexport"]  # 216 bytes each
    assert jax_adapter._read_traces(tmp_path / "b.jaxexport") is None  # not an export: it will be traced afresh


def test_prepare_then_bursts_then_finish_is_what_measure_chains(monkeypatch):
    monkeypatch.setenv("BENCH_WORKER", "gw7")  # as a worker process sees it
    prepared = prepare(_tiny("practical"), "jax", "cpu", 1, 6, settings=QUICK)
    assert prepared.record["status"] == "prepared" and prepared.record["worker"] == "gw7"
    assert prepared.record["latency_ms_p50"] is None  # nothing timed yet
    bursts = [prepared.time_burst(4, warmup=1) for _ in range(3)]
    assert [len(b) for b in bursts] == [4, 4, 4] and all(t > 0 for b in bursts for t in b)
    record = finish(prepared.record, bursts, QUICK)
    assert record["status"] == "ok" and record["rounds"] == 3 and record["iterations"] == 12
    assert record["latency_ms_p50"] == pytest.approx(1e3 * float(np.median(np.concatenate(bursts))))
    assert prepared.record["status"] == "prepared"  # finish does not change its input


def test_finish_turns_rounds_into_the_latency_columns():
    record = {"status": "prepared", "batch": 4, "audio_s_per_step": 0.06, "warnings": "a note",
              "flops_per_step": 2e9, "bytes_per_step": 1e8, "peak_flops_per_s": 1e11, "peak_bytes_per_s": 1e10,
              "peaks_source": "test"}
    rounds = [[0.010, 0.012], [0.011, 0.013], [0.009, 0.010], [0.010, 0.011]]
    r = finish(record, rounds, QUICK)
    assert r["status"] == "ok" and r["rounds"] == 4 and r["iterations"] == 8
    assert r["latency_ms_p50"] == pytest.approx(10.5) and r["latency_ms_min"] == pytest.approx(9.0)
    assert r["latency_ms_p50_ci_low"] <= 10.5 <= r["latency_ms_p50_ci_high"]
    assert r["rtf"] == pytest.approx(0.0105 / 0.06) and r["audio_s_per_s"] == pytest.approx(4 * 0.06 / 0.0105)
    assert r["roofline_bound_ms"] == pytest.approx(20.0) and r["roofline_fraction"] == pytest.approx(20.0 / 10.5)
    assert r["warnings"].startswith("a note") and r["steps_per_round"] == QUICK.steps_per_round
    two = finish(record, rounds[:2], QUICK)
    assert two["status"] == "ok" and two.get("latency_ms_p50_ci_low") is None  # too few rounds for an interval
    assert r.get("page_faults_per_step") is None  # not counted: not claimed
    bursts = [{"page_faults_per_step": f, "worker_cores_busy": c} for f, c in [(0.0, 1.0), (3.0, 1.9), (100.0, 1.2), (2.0, 1.5)]]
    counted = finish(record, rounds, QUICK, bursts=bursts + [{}])  # a burst that counted nothing adds nothing
    assert counted["page_faults_per_step"] == 2.5 and counted["worker_cores_busy"] == pytest.approx(1.35)


def test_a_burst_counts_the_page_faults_of_a_step_that_takes_fresh_memory():
    import mmap

    prepared = prepare(_tiny("practical"), "jax", "cpu", 1, 6, settings=QUICK)
    prepared.time_burst(2)
    assert prepared.burst_columns["page_faults_per_step"] >= 0
    assert 0.0 < prepared.burst_columns["worker_cores_busy"] <= os.cpu_count() + 0.5  # CPU seconds per wall second
    step = prepared.session.step

    def step_on_fresh_pages(state):  # as an eager step does whose new tensors come from the kernel
        with mmap.mmap(-1, 16 << 20) as fresh:
            for offset in range(0, len(fresh), mmap.PAGESIZE):
                fresh[offset] = 1
        return step(state)

    prepared.session.step = step_on_fresh_pages
    prepared.time_burst(3, warmup=1)
    assert prepared.burst_columns["page_faults_per_step"] >= 8  # 16 MiB a step: 4096 pages, or 8 huge ones

    def step_that_waits(state):  # a step whose time is spent waiting, not computing: no core kept busy
        time.sleep(0.05)
        return step(state)

    prepared.session.step = step_that_waits
    prepared.time_burst(3)
    assert prepared.burst_columns["worker_cores_busy"] < 0.5


def test_finish_without_any_step_is_a_failed_record():
    r = finish({"status": "prepared", "warnings": None}, [], QUICK)
    assert r["status"] == "failed" and r["error"] == "no step was timed"


def test_a_nan_while_timing_a_burst_raises_so_the_worker_answers_an_error():
    prepared = prepare(_tiny("baseline"), "jax", "cpu", 1, 6, settings=QUICK)
    prepared.session.all_finite = lambda tree: False
    with pytest.raises(FloatingPointError):
        prepared.time_burst(2)
    assert measure_mod.one_line_error(FloatingPointError("NaN\nmore")) == "FloatingPointError: NaN"


def test_bursts_check_their_outputs_every_time_and_the_state_in_bursts_1_2_4_8():
    prepared = prepare(_tiny("baseline"), "jax", "cpu", 1, 6, settings=QUICK)
    checked_state = []
    finite = prepared.session.all_finite

    def all_finite(tree):
        checked_state.append(isinstance(tree, tuple) and len(tree) == 2 and tree[1] is not None)
        return finite(tree)

    prepared.session.all_finite = all_finite
    for _ in range(9):
        prepared.time_burst(1)
    assert checked_state == [True, True, False, True, False, False, False, True, False]


def test_cudagraphs_mode_needs_a_cuda_device():
    import torch

    from bench.adapters import torch_adapter

    with pytest.raises(ValueError, match="needs a CUDA device"):
        torch_adapter.prepare(tiny(variants.get("practical").spec), batch=1, chunk_frames=6, dtype="float32",
                              native_device=torch.device("cpu"), mode="cudagraphs", seed=0, precision="highest")


@pytest.mark.parametrize("name", variants.names())
def test_onednn_mode_steps_as_eager_does_on_the_same_weights(name):
    """torch "onednn" runs a copy of the model with oneDNN dense layers: every step (through each
    phase of the time reductions) equals the eager step within 1e-4, the encoder keeps its own
    layers, and the session says what it changed."""
    import torch

    from bench.adapters import torch_adapter
    from variants.torch_model import Dense

    spec = tiny(variants.get(name).spec)
    kwargs = dict(batch=2, chunk_frames=6, dtype="float32", native_device=torch.device("cpu"), seed=3,
                  precision="highest")
    eager = torch_adapter.prepare(spec, mode="eager", **kwargs)
    onednn = torch_adapter.prepare(spec, mode="onednn", **kwargs)
    a, b = eager.initial_state(), onednn.initial_state()
    for _ in range(4):
        ya, a = eager.step(a)
        yb, b = onednn.step(b)
        np.testing.assert_allclose(yb.numpy(), ya.numpy(), atol=1e-4, rtol=1e-4)
    assert "oneDNN" in onednn.runtime_options
    assert any(isinstance(m, Dense) for m in onednn.encoder.module.modules())
    assert not any(isinstance(m, Dense) for m in onednn._profiled.modules())


def test_jax_step_writes_the_attention_ring_where_it_lies():
    """The JAX step a session times (its state's in-place leaves donated) updates the key/value ring in
    place: XLA copies no ring whole. Without the model's compiler options it copied each one twice a step."""
    import jax.numpy as jnp

    from bench.adapters.jax_adapter import donating_step, split_state

    spec = tiny(variants.get("baseline").spec)
    enc = variants.build(spec, "jax", seed=0)
    x, state = jnp.zeros((3, 6, spec.input_dim)), split_state(enc.init_state(3))
    ring = f"f32[3,{spec.num_heads},{spec.left_context},{spec.head_dim}]"

    def ring_copies(options):
        program = donating_step(enc.step_fn, options).lower(enc.params, x, *state).compile().as_text()
        assert any(ring in line and "scatter" in line for line in program.splitlines())  # the ring is written
        return [line for line in program[program.index("ENTRY"):].splitlines() if ring in line and " copy(" in line]

    assert ring_copies(enc.step_compiler_options) == []
    assert ring_copies(None)  # the options are what makes the difference


def test_int8_record_says_what_was_quantised_and_counts_its_bytes():
    spec = _tiny("practical")
    fp32 = measure(spec, "onnxruntime", "cpu", 1, 6, settings=SETTINGS)
    int8 = measure(spec, "onnxruntime", "cpu", 1, 6, dtype="int8", settings=SETTINGS)
    assert fp32["status"] == int8["status"] == "ok", int8["error"]
    assert int8["dtype"] == "int8" and "MatMuls with weights on int8 weights" in int8["quantized"]
    assert int8["weight_bytes_first_pass"] < 0.5 * fp32["weight_bytes_first_pass"]
    assert int8["state_bytes"] == fp32["state_bytes"]  # the state stays float32
    assert int8["bytes_per_step"] == int8["weight_bytes_first_pass"] + 2 * int8["state_bytes"]
    # MatMulInteger counted as MatMul; the depthwise convs are elementwise, as in float32
    assert int8["flops_per_step_onnx"] == fp32["flops_per_step_onnx"] < int8["flops_per_step"]


def test_device_step_times_become_device_latency_columns():
    record = {"status": "prepared", "batch": 1, "audio_s_per_step": 0.06, "warnings": None}
    rounds = [[0.010, 0.011], [0.012, 0.010]]
    r = finish(record, rounds, SETTINGS, device_s=[0.008, 0.009, 0.010, 0.008])
    assert r["latency_ms_p50_device"] == pytest.approx(8.5) and r["latency_ms_p90_device"] <= 10.0
    assert "latency_ms_p50_device" not in finish(record, rounds, SETTINGS)  # no device clock, no column


def test_cuda_graph_step_replays_one_graph_per_phase_and_copies_a_fresh_stream_in(monkeypatch):
    """CudaGraphStep's bookkeeping on the CPU: the capture is replaced by a 'graph' that runs the eager
    step into the static buffers when replayed; streaming through it equals the eager step."""
    import torch

    from bench.adapters import torch_adapter
    from variants.state import array_leaves, with_arrays

    class EagerGraph:
        def __init__(self, module, x, state, out):
            self.module, self.x, self.state, self.out = module, x, state, out

        def replay(self):
            with torch.inference_mode():
                y, new = self.module.step(self.x, self.state)
            self.out[0].copy_(y)
            for buffer, value in zip(array_leaves(self.state), array_leaves(new)):
                buffer.copy_(value)

    captured = []

    def capture(self, state):
        captured.append(state)
        with torch.inference_mode():
            y, new = self.module.step(self.x, state)
        graph = EagerGraph(self.module, self.x, state, [y.clone()])
        return graph, graph.out[0], with_arrays(new, array_leaves(state))

    monkeypatch.setattr(torch_adapter.CudaGraphStep, "_capture", capture)

    enc = variants.build(_tiny("baseline"), "torch")
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, enc.spec.input_dim), np.float32))
    step = torch_adapter.CudaGraphStep(enc.module, x, enc.init_state(1))
    assert len(step.graphs) == len(captured) == 3  # 4 frames into a 3x stacking: buffer counts 0, 1, 2

    state, eager_state = enc.init_state(1), enc.init_state(1)  # a fresh stream, copied into the buffers
    for _ in range(5):
        y, state = step(x, state)
        with torch.inference_mode():
            y_eager, eager_state = enc.module.step(x, eager_state)
        torch.testing.assert_close(y, y_eager)
    assert len(captured) == 3  # nothing captured while streaming
    assert all(a is b for a, b in zip(array_leaves(state), array_leaves(step.static)))
