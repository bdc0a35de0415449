"""The harness's vocabulary: frameworks, modes, devices, dtypes, the keys of a record, and what identifies one.

Every other module imports these names from here; none keeps its own list.
"""

from __future__ import annotations

from bench import profile
from bench.roofline import NAMED_DEVICES
from variants.build import DTYPE_BYTES, DTYPES, FRAMEWORKS, QUANTIZED_FRAMEWORKS, activation_dtype  # noqa: F401
# (what the models can be built in is the models' fact)

# How a framework runs the step. torch "cudagraphs" replays a CUDA graph of the step over static state
# buffers (CUDA only); torch "onednn" is the eager step with its dense layers run by oneDNN (CPU only);
# onnxruntime "session" is an InferenceSession with IO binding.
MODES = {"jax": ("jit",), "torch": ("eager", "compile", "cudagraphs", "onednn"), "onnxruntime": ("session",)}
DEFAULT_MODE = {"jax": "jit", "torch": "eager", "onnxruntime": "session"}
# Modes that run on one device only: (framework, mode) -> (that device, why, as a run's skip line ends)
ONE_DEVICE_MODES = {("torch", "cudagraphs"): ("gpu", "it replays CUDA graphs, which need --device gpu"),
                    ("torch", "onednn"): ("cpu", "it runs oneDNN's CPU kernels, which need --device cpu")}
DEVICES = ("cpu", "gpu", "tpu")
# How float32 matmuls and convolutions are computed, the same in every framework (bench.adapters apply it):
# "highest" true float32; "high" TF32 on NVIDIA GPUs, 3 bfloat16 passes on TPU; "default" each device's
# fast default (TF32 on NVIDIA GPUs, 1 bfloat16 pass on TPU). On a CPU all three are float32. The first
# is what a library caller gets; bench.toml's [run] precision is what `bench run` uses.
PRECISIONS = ("highest", "high", "default")

BASELINE = "baseline"  # speedups divide by this variant, measured in the same run and setting

# What one measurement varies besides the variant; a record's speedup divides by the baseline that
# shares all of these (and, in a merge of several runs, the run and the machine). `revision` is set
# only by `bench ab` ("base" / "head"), whose two sides each have their own baseline; `overrides`
# only by `--set` (the cell, e.g. "left_context=128"), whose cells each have their own.
SETTING_FIELDS = ("framework", "mode", "device", "dtype", "precision", "batch", "chunk_frames", "revision",
                  "overrides")
# A record within one run: one run has one chunk size and one dtype, so these fields identify it.
# raw_times.json is keyed on them ("variant|framework|mode|device|batch") and `bench compare` matches on them.
ROW_KEY = ("variant", "framework", "mode", "device", "batch")

RAW_STEP_KEY = "raw_step_s"  # the record key holding the raw per-step seconds (moved to raw_times.json on disk)

# Every record has all of these keys (None where not measured), in results.csv's column order.
RECORD_KEYS = (
    "variant", "framework", "mode", "device", "device_name", "dtype", "precision", "batch", "chunk_frames",
    "params", "weight_bytes", "state_bytes_per_stream", "state_bytes_attention", "state_bytes_conv",
    "state_bytes_time_reduction", "macs_per_step", "flops_per_step", "transcendentals_per_step",
    "flops_per_step_xla", "flops_per_step_torch", "flops_per_step_fvcore", "flops_per_step_onnx", "bytes_per_step",
    "arithmetic_intensity", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_mean",
    "latency_ms_iqr", "compile_s", "iterations", "rtf", "audio_s_per_s", "speedup_vs_baseline",
    "speedup_ci_low", "speedup_ci_high",
    "roofline_bound_ms", "roofline_fraction", "second_pass_macs_per_segment", "second_pass_latency_ms_p50",
    "status", "error",
)
# Further keys `bench.measure` always sets: cross-check details, the spec's own counts, timing diagnostics.
EXTRA_KEYS = (
    "params_analytic", "params_first_pass", "weight_bytes_first_pass", "state_bytes", "state_bytes_measured",
    "audio_s_per_step", "flops_per_step_xla_transcendentals", "bytes_accessed_xla",
    "flops_per_step_fvcore_total", "counter_notes", "latency_ms_min", "latency_iqr_over_median", "latency_noisy",
    "timing_capped", "others_cpu_cores", "cpu_steal_share", "cpu_probe_us", "warmup_iterations", "peak_flops_per_s", "peak_bytes_per_s", "peaks_source",
    "peak_bytes_per_s_start",
    "warnings", "measure_wall_s", *(f"roofline_ms_{k}" for k in NAMED_DEVICES),
    "latency_ms_p50_ci_low", "latency_ms_p50_ci_high", "latency_ms_p50_device", "latency_ms_p90_device", "rounds", "steps_per_round", "worker", "worker_peak_rss_bytes", "worker_huge_page_share", "page_faults_per_step", "worker_cores_busy", "revision",
    "precision_applied", "runtime_options", "quantized", "base_variant", "overrides", "host", *profile.COLUMNS,
)


def raw_key(record) -> str:
    """A record's key in raw_times.json: its ROW_KEY values joined by '|' (and its revision in `bench ab`)."""
    key = "|".join(str(record.get(k)) for k in ROW_KEY)
    return f"{key}|{record['revision']}" if record.get("revision") else key
