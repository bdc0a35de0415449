"""One measurement: a (variant, framework, device, batch, chunk) in, one plain record out.

`prepare()` builds a session and fills every column but the latencies (its `warm` checks and warms
it up, at once or when the runner asks: it builds several sessions at a time but runs steps in one
at a time); its `time_burst` times steps; `finish()` turns the step times of every round into the
latency columns. A worker process runs the first two and the runner the last; `measure()` chains
them in one process. Together they fill the analytic columns from the spec (the ground
truth), builds and compiles the step through the framework's adapter (imported only here, lazily),
cross-checks the FLOP counters, times synchronised steps with the state threaded through, and
derives real-time factor, throughput and the roofline. Anything that goes wrong after the
arguments are accepted becomes a record with status "failed" and the error text, except
DeviceUnavailableError, which is raised: a missing device fails the whole run, not one cell.

FLOP columns, all FLOPs = 2 x multiply-adds: `flops_per_step` (analytic, the ground truth),
`flops_per_step_xla` (XLA cost analysis total, JAX records only), `flops_per_step_torch`
(FlopCounterMode) and `flops_per_step_fvcore` (fvcore's matmul/conv/attention operators;
`flops_per_step_fvcore_total` adds its layer-norm counts), torch records only; `flops_per_step_onnx`
(MatMul/Gemm/Conv/Einsum nodes of the exported graph), onnxruntime records only. Latency columns
come from the p50 of synchronised steps; `rtf` = p50 / audio seconds per step, `audio_s_per_s` =
batch x audio seconds per step / p50.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from bench import profile, roofline, stats, timing
from bench.config import MeasureSettings, load_config
from bench.machine import DeviceUnavailableError, huge_page_share, machine_info, minor_page_faults, peak_rss_bytes, resolve_device
from bench.schema import DTYPE_BYTES, EXTRA_KEYS, PRECISIONS, RAW_STEP_KEY, RECORD_KEYS, activation_dtype
from bench.worker import WORKER_ENV



def empty_record() -> dict[str, Any]:
    return {key: None for key in (*RECORD_KEYS, *EXTRA_KEYS)} | {RAW_STEP_KEY: []}


def _variant_name(spec) -> str:
    import variants

    for name in variants.names():
        if variants.get(name).spec == spec:
            return name
    return "custom"


def one_line_error(error: BaseException) -> str:
    """'Type: first line of the message': how a failed record states its error."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def analytic_columns(spec, batch: int, chunk_frames: int, dtype: str, precision: str = PRECISIONS[0],
                     weight_bytes_first_pass: int | None = None) -> dict[str, Any]:
    """Everything the spec alone determines: parameters, state bytes, MACs/FLOPs, bytes per step.

    bytes_per_step = first-pass weights read + state read + state written, at `dtype` (the bool
    attention mask stays 1 byte); activations and the input chunk are left out, so it is a lower
    bound on traffic. The cascade's second-pass weights are not read by a first-pass step.
    A quantised dtype holds activations and state in its float (schema.activation_dtype); its
    weights' bytes are the runtime's to say (`weight_bytes_first_pass`, from the quantised graph)."""
    from variants import analytic

    nbytes = DTYPE_BYTES[activation_dtype(dtype)]
    params = analytic.param_count(spec)
    params_first = analytic.first_pass_param_count(spec)
    macs = sum(analytic.macs_per_step(spec, batch, chunk_frames).values())
    state_total = analytic.state_bytes(spec, batch, nbytes)
    per_stream = analytic.state_bytes_breakdown(spec, 1, nbytes)
    weight_first = params_first * nbytes if weight_bytes_first_pass is None else weight_bytes_first_pass
    bytes_per_step = weight_first + 2 * state_total
    audio_s = chunk_frames * spec.input_frame_ms / 1000.0
    return {
        "params_analytic": params, "params_first_pass": params_first,
        "weight_bytes": (params - params_first) * nbytes + weight_first, "weight_bytes_first_pass": weight_first,
        "state_bytes_per_stream": sum(per_stream.values()),
        "state_bytes_attention": per_stream["attention"], "state_bytes_conv": per_stream["conv"],
        "state_bytes_time_reduction": per_stream["time_reduction"], "state_bytes": state_total,
        "macs_per_step": macs, "flops_per_step": 2 * macs,
        "transcendentals_per_step": analytic.transcendentals_per_step(spec, batch, chunk_frames),
        "bytes_per_step": bytes_per_step, "arithmetic_intensity": 2 * macs / bytes_per_step,
        "second_pass_macs_per_segment": analytic.second_pass_macs_per_segment(spec, batch),
        "audio_s_per_step": audio_s,
        **{f"roofline_ms_{k}": v for k, v in roofline.predict_latency_ms(
            2 * macs, bytes_per_step, activation_dtype(dtype), precision).items()},
    }


PEAK_KEYS = ("peak_flops_per_s", "peak_bytes_per_s", "peaks_source")  # a device's peaks, measured once per run
# What the worker counts around each burst, a value per round, and the record keeps the median of:
# minor page faults per step (memory a step got fresh from the kernel), and the cores its threads kept
# busy while the steps ran (process CPU time / wall time): 2.0 on two cores is every thread working or
# spinning, 1.0 one; a step whose pool threads sleep through its small ops runs as if on one core.
BURST_COLUMNS = ("page_faults_per_step", "worker_cores_busy")


@dataclass
class Prepared:
    """A built and compiled session (then checked and warmed up: `warm`) and the record of everything
    but its step times.

    `time_burst` times a few more steps with the state threaded on from the last burst, as a stream
    would see them; the worker process that owns this answers the runner's rounds with it."""

    record: dict[str, Any]
    session: Any = None  # None when preparing failed (the record says why)
    state: Any = None
    timed_s: list[float] = field(default_factory=list)  # every step time_burst timed, in order
    device_s: list[float] | None = None  # the last burst's steps on the device's clock (CUDA events), if any
    burst_columns: dict[str, float] = field(default_factory=dict)  # the last burst's BURST_COLUMNS it could count
    notes: list[str] = field(default_factory=list)  # the record's warnings so far
    bursts: int = 0  # how many time_burst calls

    def warm(self, settings: MeasureSettings | Mapping[str, Any] | None = None,
             known_peaks: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check a built session's first step, count its FLOPs, measure the peaks (unless
        `known_peaks`), time the cascade's second pass and run the warm-up steps: the steps run here,
        so the runner warms one session at a time while it builds several at once. The record's
        status becomes "prepared", or "failed" with the error."""
        t_start = time.perf_counter()
        settings = _settings(settings)
        session, record, notes = self.session, self.record, self.notes
        try:
            state = session.initial_state()
            record["state_bytes_measured"] = session.state_nbytes(state)
            if record["state_bytes_measured"] != record["state_bytes"]:
                notes.append(f"state arrays hold {record['state_bytes_measured']} bytes, "
                             f"the spec's formula {record['state_bytes']}")

            # One checked step before spending time on timing: a NaN model fails fast.
            outputs, state = session.step(state)
            session.sync((outputs, state))
            if not session.all_finite((outputs, state)):
                raise FloatingPointError("the step produced NaN/Inf (outputs or state) on its first call")
            if (after := session.state_nbytes(state)) != record["state_bytes_measured"]:
                notes.append(f"the step returns a state of {after} bytes for one of {record['state_bytes_measured']}")

            if settings.counters:
                _count(session, record)

            if settings.roofline:
                if known_peaks:
                    record.update({k: known_peaks[k] for k in PEAK_KEYS})
                else:
                    peaks = session.peaks()
                    record.update(peak_flops_per_s=peaks.flops_per_s, peak_bytes_per_s=peaks.bytes_per_s,
                                  peaks_source=peaks.source)

            if settings.second_pass and (segment := session.second_pass_step()) is not None:
                sp = timing.time_steps(lambda s: (segment(), s), None, lambda tree: None, warmup=1,
                                       min_iterations=5, min_time_s=0.2, max_time_s=max(1.0, settings.max_time_s / 4))
                record["second_pass_latency_ms_p50"] = stats.latency_stats(sp.step_s).latency_ms_p50

            for _ in range(settings.warmup_iterations):
                outputs, state = session.step(state)
                session.sync((outputs, state))
            self.state = state
            record["worker_peak_rss_bytes"] = peak_rss_bytes()
            record["worker_huge_page_share"] = huge_page_share()
            record["status"] = "prepared"
        except Exception as e:  # noqa: BLE001 - a failed measurement is data
            self.fail(e)
        self.finish_phase(t_start)
        return record

    def fail(self, error: BaseException) -> None:
        self.session = self.state = None
        self.record.update(status="failed", error=one_line_error(error))

    def finish_phase(self, t_start: float) -> None:
        """The record's warnings and wall time (measure_wall_s: building and warming together)."""
        self.record["warnings"] = "; ".join(self.notes) or None
        self.record["measure_wall_s"] = (self.record.get("measure_wall_s") or 0.0) + time.perf_counter() - t_start

    def time_burst(self, steps: int, warmup: int = 0) -> list[float]:
        faults, cpu_s, wall_s = minor_page_faults(), time.process_time(), time.perf_counter()
        result = timing.time_steps(self.session.step, self.state, self.session.sync, warmup=warmup,
                                   min_iterations=steps, min_time_s=0.0, max_time_s=math.inf,
                                   device_timer=getattr(self.session, "device_timer", None))
        cpu_s, wall_s = time.process_time() - cpu_s, time.perf_counter() - wall_s
        self.bursts += 1
        # The outputs every burst; the state, which is far larger (seen: 14-79 ms to check at batch 64,
        # a third of a step), in bursts 1, 2, 4, 8, ...: a NaN in the state reaches the outputs anyway
        checked = (result.outputs, result.state) if self.bursts & (self.bursts - 1) == 0 else result.outputs
        if not self.session.all_finite(checked):
            raise FloatingPointError("the step produced NaN/Inf (outputs or state) while being timed")
        self.state = result.state
        self.timed_s.extend(result.step_s)
        self.device_s = result.device_s
        self.burst_columns = {"worker_cores_busy": cpu_s / wall_s} if wall_s > 0 else {}
        if faults is not None:
            self.burst_columns["page_faults_per_step"] = (minor_page_faults() - faults) / (warmup + len(result.step_s))
        return list(result.step_s)

    def profile(self, steps: int, peak_bytes_per_s: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """`steps` steps under the framework's profiler: the record's profile columns
        (bench.profile.summarize, scaled to the median of the steps this session timed, which is the
        record's p50; `steps` more are timed first when it timed none) and the raw profile for the run
        folder: every op, and each class beside its bounds (bench.profile.class_table). Where the
        adapter splits a step without a profiler (`profile_classes`), `steps` more steps give the classes.
        `peak_bytes_per_s`: the bandwidth the rounds' probe saw (bench.measure.finish), for the bounds."""
        if not self.timed_s:
            self.time_burst(steps)
        # where the adapter can split a step without a profiler (PyTorch on a CPU), the classes come
        # from that split: a profiler's per-op cost falls unevenly on the classes. It runs first: the
        # steps just after torch.profiler's ran up to 3x slow.
        profile_classes = getattr(self.session, "profile_classes", None)
        split = profile_classes(self.state, steps) if profile_classes else None
        if split is not None:
            self.state = split[2]
        ops, wall_s, self.state = self.session.profile_ops(self.state, steps)
        segments, split_wall_s = (ops, wall_s) if split is None else split[:2]
        r = self.record
        bounds = profile.class_bounds(self.session.spec, r["batch"], r["chunk_frames"],
                                      DTYPE_BYTES[activation_dtype(r["dtype"])])
        columns = profile.summarize(segments, split_wall_s, steps, statistics.median(self.timed_s), bounds,
                                    r.get("peak_flops_per_s"), peak_bytes_per_s or r.get("peak_bytes_per_s"))
        columns["profile_ops_per_step"] = len(ops) / steps
        columns["profile_source"] = self.session.profile_source
        raw = {"classes": profile.class_table(bounds, columns, r["dtype"], r.get("precision") or PRECISIONS[0]),
               "ops": profile.raw_ops(ops)}
        return columns, raw


def prepare(variant, framework: str, device: str, batch: int, chunk_frames: int, *, dtype: str = "float32",
            precision: str = PRECISIONS[0], mode: str | None = None,
            settings: MeasureSettings | Mapping[str, Any] | None = None, seed: int = 0,
            known_peaks: Mapping[str, Any] | None = None, warm: bool = True) -> Prepared:
    """Build and compile one streaming step of `variant` (a registered name or an EncoderSpec), then
    (`warm`, else later by `Prepared.warm`) check it, count its FLOPs, warm it up and time the
    cascade's second pass; the record has status "prepared" ("built" before warming), or "failed"
    with the error.

    Invalid arguments (unknown variant, framework, mode or dtype; batch or chunk < 1) raise
    ValueError before anything runs; a device that is not there raises DeviceUnavailableError.
    `known_peaks` (PEAK_KEYS columns of an earlier record on the same device and dtype) saves
    measuring the machine's peaks again."""
    import variants
    from bench import adapters
    from variants.build import check_dtype

    t_start = time.perf_counter()
    settings = _settings(settings)
    spec = variants.resolve_spec(variant)
    mode = adapters.resolve_mode(framework, mode)
    check_dtype(dtype, framework)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    if batch < 1 or chunk_frames < 1:
        raise ValueError(f"batch={batch} and chunk_frames={chunk_frames} must be >= 1")

    record = empty_record()
    del record[RAW_STEP_KEY]
    record.update(variant=variant if isinstance(variant, str) else _variant_name(spec), framework=framework,
                  mode=mode, device=device, dtype=dtype, precision=precision, batch=batch, chunk_frames=chunk_frames,
                  warmup_iterations=settings.warmup_iterations)
    native = resolve_device(framework, device)  # DeviceUnavailableError propagates
    prepared = Prepared(record)
    try:
        record.update(machine_info(framework))
        record["worker"] = os.environ.get(WORKER_ENV)
        record.update(analytic_columns(spec, batch, chunk_frames, dtype, precision))
        session = adapters.load(framework).prepare(
            spec, batch=batch, chunk_frames=chunk_frames, dtype=dtype, native_device=native, mode=mode, seed=seed,
            precision=precision)
        num_params = getattr(session, "num_params", None) or session.encoder.num_params
        record.update(device_name=session.device_name, compile_s=session.compile_s, params=num_params(),
                      precision_applied=session.precision_applied,
                      runtime_options=getattr(session, "runtime_options", None),
                      quantized=getattr(session, "quantized", None))
        if record["quantized"]:  # the weights a step reads are the quantised graph's, not the spec's floats
            record.update(analytic_columns(spec, batch, chunk_frames, dtype, precision,
                                           weight_bytes_first_pass=session.step_weight_bytes))
        if record["params"] != record["params_analytic"]:
            prepared.notes.append(f"model has {record['params']} parameters, the spec's formula "
                                  f"{record['params_analytic']}")
        prepared.session = session
        record["status"] = "built"
    except DeviceUnavailableError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed measurement is data
        prepared.fail(e)
    prepared.finish_phase(t_start)
    if warm and prepared.session is not None:
        prepared.warm(settings, known_peaks)
    return prepared


def finish(record: Mapping[str, Any], rounds: Sequence[Sequence[float]], settings: MeasureSettings,
           device_s: Sequence[float] = (), bursts: Sequence[Mapping[str, float]] = (),
           bandwidth_samples: Sequence[float] = ()) -> dict[str, Any]:
    """The final record of a prepared measurement from its step times, one list per round (seconds):
    latency percentiles over every step, a 95% interval of the p50 over rounds, real-time factor,
    throughput and the roofline fraction; with `device_s` (the same steps on the device's clock, CUDA
    events) their p50 and p90 too; with `bursts` (each round's Prepared.burst_columns) the median of
    each of BURST_COLUMNS; with `bandwidth_samples` (bench.roofline.BandwidthProbe, one per round of these
    rounds) the roofline's bandwidth is theirs (window_peak_columns). Pure: no framework, nothing timed."""
    record = dict(record)
    if bandwidth_samples and record.get("peak_bytes_per_s"):
        record.update(window_peak_columns(record, bandwidth_samples))
    if device_s:
        device = stats.latency_stats(list(device_s))
        record.update(latency_ms_p50_device=device.latency_ms_p50, latency_ms_p90_device=device.latency_ms_p90)
    for column in BURST_COLUMNS:
        if values := [b[column] for b in bursts if b.get(column) is not None]:
            record[column] = statistics.median(values)
    notes = [record["warnings"]] if record.get("warnings") else []
    steps = [t for burst in rounds for t in burst]
    if not steps:
        return {**record, "status": "failed", "error": record.get("error") or "no step was timed"}
    summary = stats.latency_stats(steps)
    record.update({k: v for k, v in summary.to_dict().items() if k not in ("noisy", "iqr_over_median")})
    record.update(latency_iqr_over_median=summary.iqr_over_median, latency_noisy=summary.noisy,
                  rounds=len(rounds), steps_per_round=settings.steps_per_round)
    if summary.warning:
        notes.append(summary.warning)
    p50 = stats.median_interval(rounds)
    if p50.low is not None:
        record.update(latency_ms_p50_ci_low=p50.low * 1e3, latency_ms_p50_ci_high=p50.high * 1e3)
    latency_s = summary.latency_ms_p50 / 1e3
    record["rtf"] = latency_s / record["audio_s_per_step"]
    record["audio_s_per_s"] = record["batch"] * record["audio_s_per_step"] / latency_s
    if record.get("peak_flops_per_s") and record.get("peak_bytes_per_s"):
        peaks = roofline.Peaks(flops_per_s=record["peak_flops_per_s"], bytes_per_s=record["peak_bytes_per_s"],
                               source=record.get("peaks_source") or "")
        bound_s = roofline.roofline_bound_s(record["flops_per_step"], record["bytes_per_step"], peaks)
        record.update(roofline_bound_ms=bound_s * 1e3, roofline_fraction=roofline.roofline_fraction(bound_s, latency_s))
    record["warnings"] = "; ".join(notes) or None
    if record.get("status") == "prepared":
        record["status"] = "ok"
    return record


def window_peak_columns(record: Mapping[str, Any], samples: Sequence[float]) -> dict[str, Any]:
    """The peak columns with the bandwidth of the rounds a record was timed in (roofline.window_bandwidth
    of the probe's samples, one per round) in place of the run-start peak, which
    `peak_bytes_per_s_start` keeps."""
    high, start = roofline.window_bandwidth(samples), record["peak_bytes_per_s"]
    return {"peak_bytes_per_s": high, "peak_bytes_per_s_start": start,
            "peaks_source": f"bandwidth {high / 1e9:.1f} GB/s: the 90th percentile of {len(samples)} numpy copy/read "
                            f"samples, one per round between the bursts (median {statistics.median(samples) / 1e9:.1f}, "
                            f"range {min(samples) / 1e9:.1f}-{max(samples) / 1e9:.1f}); at the run's start "
                            f"{start / 1e9:.1f}, {record.get('peaks_source') or ''}"}


def measure(variant, framework: str, device: str, batch: int, chunk_frames: int, *, dtype: str = "float32",
            precision: str = PRECISIONS[0], mode: str | None = None, settings: MeasureSettings | None = None,
            seed: int = 0) -> dict[str, Any]:
    """prepare, `settings.rounds` bursts and finish in this process: one complete record, with its raw
    per-step seconds under RAW_STEP_KEY. `bench run` spreads the same steps over worker processes and
    interleaved rounds instead; this is for tests and for timing one variant from Python."""
    settings = _settings(settings)
    prepared = prepare(variant, framework, device, batch, chunk_frames, dtype=dtype, precision=precision, mode=mode,
                       settings=settings, seed=seed)
    if prepared.session is None:
        return prepared.record | {RAW_STEP_KEY: []}
    rounds: list[list[float]] = []
    device_s: list[float] = []
    bursts: list[dict[str, float]] = []
    try:
        for _ in range(settings.rounds):
            rounds.append(prepared.time_burst(settings.steps_per_round, settings.round_warmup))
            device_s += prepared.device_s or []
            bursts.append(prepared.burst_columns)
    except Exception as e:  # noqa: BLE001 - a failed measurement is data
        return prepared.record | {"status": "failed", "error": one_line_error(e), RAW_STEP_KEY: []}
    record = finish(prepared.record, rounds, settings, device_s, bursts)
    record[RAW_STEP_KEY] = [t for burst in rounds for t in burst]
    return record


def _settings(settings: MeasureSettings | Mapping[str, Any] | None) -> MeasureSettings:
    if settings is None:
        return load_config().measure
    return settings if isinstance(settings, MeasureSettings) else MeasureSettings(**settings)


def _count(session, record: dict[str, Any]) -> None:
    """Fill the per-counter FLOP columns; a counter that cannot count leaves None and a note."""
    counts = session.count_flops()
    reasons = [c.reason for c in counts.values() if c.reason]
    if xla := counts.get("xla"):
        record["flops_per_step_xla"] = xla.flops
        record["flops_per_step_xla_transcendentals"] = xla.transcendentals
        record["bytes_accessed_xla"] = xla.bytes_accessed
    if fcm := counts.get("flop_counter_mode"):
        record["flops_per_step_torch"] = fcm.flops
    if fv := counts.get("fvcore"):
        record["flops_per_step_fvcore"] = fv.matmul_flops
        record["flops_per_step_fvcore_total"] = fv.flops
    if onnx := counts.get("onnx"):
        record["flops_per_step_onnx"] = onnx.flops
    record["counter_notes"] = "; ".join(reasons) or None
