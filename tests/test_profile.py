"""bench.profile: op classes from module paths, time attribution with overlapping ops, and real profiles of
tiny variants in both frameworks (every op lands in a class)."""

import dataclasses

import pytest
import variants
from bench import measure, profile
from bench.profile import CLASSES, TIME_PREFIX, Op, attribute, op_class
from tiny import tiny


@pytest.mark.parametrize("path, cls", [
    ("jit(step_fn)/Encoder.step/blocks_16.step/ffn_1/down/dot_general", "ffn"),
    ("blocks.16.ffn.1", "ffn"),
    ("jit(step_fn)/Encoder.step/blocks_4.step/ffn_0/norm/add", "norm_elementwise"),
    ("blocks.3.mhsa.qkv", "attn_proj"),
    ("jit(step_fn)/Encoder.step/blocks_3.step/mhsa.step/out/dot_general", "attn_proj"),
    ("jit(step_fn)/Encoder.step/blocks_3.step/mhsa.step/concatenate", "attn_state"),
    ("blocks.3.mhsa", "attn_state"),
    ("state/blocks/11/mhsa", "attn_state"),  # a copy of the K/V cache or the Performer state
    ("blocks.5.conv", "conv"),
    ("blocks.5.conv.conv_norm", "norm_elementwise"),
    ("jit(step_fn)/Encoder.step/input.step/input/proj/dot_general", "time_reduction"),
    ("blocks.4.stack", "time_reduction"),
    ("blocks.4", "norm_elementwise"),  # residual adds between sub-layers
    ("", "unmapped"),
])
def test_an_op_takes_the_class_of_the_module_it_ran_in(path, cls):
    assert op_class(path) == cls


def test_overlapping_ops_share_their_time_and_gaps_are_outside_ops():
    ops = [Op("a", "blocks.1.ffn.0", 0.0, 4.0),  # alone 0-2, with b 2-4
           Op("b", "blocks.1.conv", 2.0, 6.0),  # with a 2-4, alone 4-6
           Op("c", "", 7.0, 8.0)]  # 6-7 and 8-10: no op
    seconds = attribute(ops, wall_s=10.0)
    assert seconds["ffn"] == pytest.approx(3.0) and seconds["conv"] == pytest.approx(3.0)
    assert seconds["unmapped"] == pytest.approx(1.0) and seconds["outside_ops"] == pytest.approx(3.0)
    assert sum(seconds.values()) == pytest.approx(10.0)


def test_classes_are_scaled_onto_the_timed_step():
    ops = [Op("a", "blocks.1.ffn.0", 0.0, 3.0), Op("b", "blocks.1.mhsa", 3.0, 4.0)]
    columns = profile.summarize(ops, wall_s=5.0, steps=1, step_s=2.5, bounds={}, peak_flops=None, peak_bytes=None)
    assert columns["profile_scale"] == pytest.approx(0.5)
    assert columns[TIME_PREFIX + "ffn"] == pytest.approx(1500.0)  # ms: 3 s profiled x 0.5
    assert sum(columns[TIME_PREFIX + c] for c in CLASSES) == pytest.approx(2500.0)


def _profiled(spec, framework, dtype="float32"):
    settings = dataclasses.replace(measure.load_config().quick, roofline=True)
    prepared = measure.prepare(spec, framework, "cpu", 2, 6, settings=settings, dtype=dtype)
    assert prepared.record["status"] == "prepared", prepared.record["error"]
    prepared.time_burst(3)
    columns, raw = prepared.profile(3)
    for cls, entry in raw["classes"].items():  # each class beside its own bound, here and on the named devices
        assert entry["measured_ms"] == columns[TIME_PREFIX + cls]
        assert entry["bound_ms_this_machine"] == columns[f"bound_ms_{cls}"]
        assert entry["bound_ms_tpu_v4"] >= 0 and entry["flops"] >= 0 and entry["bytes"] >= 0
    assert raw["classes"]["ffn"]["flops"] > 0 and raw["classes"]["ffn"]["bound_ms_tpu_v4"] > 0
    return columns, raw["ops"]


@pytest.mark.parametrize("framework", ["jax", "torch", "onnxruntime"])
@pytest.mark.parametrize("name, has_state", [("practical", True), ("conv_lower", True)])
def test_a_profiled_step_puts_every_op_in_a_class(name, has_state, framework, monkeypatch):
    monkeypatch.delenv("BENCH_WORKER", raising=False)
    columns, ops = _profiled(tiny(variants.get(name).spec), framework)
    assert ops and all(op["class"] in CLASSES for op in ops)
    assert [op for op in ops if op["class"] == "unmapped"] == []
    assert columns[TIME_PREFIX + "attn_state"] > 0 and columns[TIME_PREFIX + "ffn"] > 0
    step = sum(columns[TIME_PREFIX + c] for c in CLASSES)
    assert step == pytest.approx(columns["profile_plain_step_ms"])


def _conv_only():
    spec = tiny(variants.get("conv_lower").spec)
    return spec.replace(conv_only_blocks=spec.num_blocks)


@pytest.mark.parametrize("framework", ["jax", "torch", "onnxruntime"])
def test_a_conv_only_encoder_spends_nothing_on_attention_state(framework, monkeypatch):
    monkeypatch.delenv("BENCH_WORKER", raising=False)
    columns, ops = _profiled(_conv_only(), framework)
    assert columns[TIME_PREFIX + "attn_state"] == 0 and columns[TIME_PREFIX + "attn_proj"] == 0
    assert not [op for op in ops if op["class"] in ("attn_state", "attn_proj")]
    assert columns[TIME_PREFIX + "conv"] > 0


def test_int8_matmuls_take_the_class_of_the_layer_whose_weights_they_read(monkeypatch):
    """quantize_dynamic's MatMuls carry no exporter metadata: each is classed by the weight it reads,
    not by the node that feeds it (the FFN's first MatMul reads a LayerNorm's output)."""
    monkeypatch.delenv("BENCH_WORKER", raising=False)
    _, ops = _profiled(_conv_only(), "onnxruntime", dtype="int8")
    quantised = [op for op in ops if op["name"] in ("DynamicQuantizeMatMul", "MatMulInteger")]
    assert quantised and {op["class"] for op in quantised} == {"ffn", "conv", "time_reduction"}


def test_a_module_clock_gives_each_moment_to_the_innermost_module(monkeypatch):
    from bench.adapters import torch_adapter

    ticks = iter([0.0, 1.0, 2.0, 5.0, 6.0])  # created; mhsa called; qkv called; qkv returns; mhsa returns
    monkeypatch.setattr(torch_adapter.time, "perf_counter", lambda: next(ticks))
    clock = torch_adapter.ModuleClock()
    qkv = clock.around(lambda: "y", "blocks.1.mhsa.qkv")
    mhsa = clock.around(lambda: qkv(), "blocks.1.mhsa")
    assert mhsa() == "y"
    assert [(op.path, op.start_s, op.end_s) for op in clock.segments] == [
        ("blocks.1.mhsa", 1.0, 2.0), ("blocks.1.mhsa.qkv", 2.0, 5.0), ("blocks.1.mhsa", 5.0, 6.0)]
    seconds = attribute(clock.segments, wall_s=7.0)  # 0-1 and 6-7: the step's own code, outside any module
    assert seconds["attn_state"] == 2.0 and seconds["attn_proj"] == 3.0 and seconds["outside_ops"] == 1.0 + 1.0


def test_pytorch_on_a_cpu_splits_its_step_by_a_module_clock_and_keeps_the_profilers_ops(monkeypatch):
    monkeypatch.delenv("BENCH_WORKER", raising=False)
    columns, ops = _profiled(tiny(variants.get("practical").spec), "torch")
    assert columns["profile_source"].startswith("classes: a module clock")
    assert ops and {op["name"] for op in ops} != {"module"}  # the raw ops are torch.profiler's aten ops
    assert columns["profile_ops_per_step"] == len(ops) / columns["profile_steps"]


def test_the_bounds_take_the_bandwidth_the_rounds_sampled_when_given(monkeypatch):
    monkeypatch.delenv("BENCH_WORKER", raising=False)
    settings = dataclasses.replace(measure.load_config().quick, roofline=True)
    prepared = measure.prepare(tiny(variants.get("practical").spec), "torch", "cpu", 2, 6, settings=settings)
    assert prepared.record["status"] == "prepared", prepared.record["error"]
    prepared.time_burst(3)
    peak_flops, start_bytes = prepared.record["peak_flops_per_s"], prepared.record["peak_bytes_per_s"]
    window = start_bytes / 4
    _, raw = prepared.profile(3, peak_bytes_per_s=window)
    for cls, entry in raw["classes"].items():
        assert entry["bound_ms_this_machine"] == pytest.approx(
            1e3 * max(entry["flops"] / peak_flops, entry["bytes"] / window)), cls


def test_onnxruntime_profiles_only_the_steps_after_its_sessions_warm_up(monkeypatch):
    """ONNX Runtime's profiler records from the session's start, whose first runs are cold: the ops
    kept are those of the profiled steps alone, not of the warm-up runs before them."""
    from bench.adapters import onnxruntime_adapter

    monkeypatch.delenv("BENCH_WORKER", raising=False)
    prepared = measure.prepare(_conv_only(), "onnxruntime", "cpu", 2, 6, settings=measure.load_config().quick)
    assert prepared.record["status"] == "prepared", prepared.record["error"]
    session, state = prepared.session, prepared.state
    monkeypatch.setattr(onnxruntime_adapter, "PROFILE_WARMUP_STEPS", 0)
    one_run, _, state = session.profile_ops(state, 1)
    monkeypatch.setattr(onnxruntime_adapter, "PROFILE_WARMUP_STEPS", 3)
    ops, _, _ = session.profile_ops(state, 2)
    assert one_run and len(ops) == 2 * len(one_run)  # 5 runs' worth if the warm-up's were kept
