"""Where a step's time goes: op classes, the attribution of profiled op times to them, and each class's
own roofline bound. Framework-free: the adapters profile (XLA's profiler, torch.profiler) and hand
over a list of ops, each with the module path it ran in and its start and end.

An op's class comes from its module path (flax's name stack in JAX, the module names in PyTorch; the
two models use the same names): the path "blocks_3/ffn_0/up" and "blocks.3.ffn.0.up" are both FFN.
Ops that overlap in time (XLA runs independent ops on several threads) share the overlapping time
equally, so the classes never count a moment twice; the wall time of the profiled steps not covered
by any op is the framework's own time outside ops (dispatch, host work). A profiler slows what it
records, so the split is scaled onto the step as timed without it (the session's p50): the classes
sum to that step, and `profile_scale` says how much the profiler had stretched it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from variants.schedule import ATTENTION_STATE_KEYS

# The classes of a first-pass step, in the order reports stack them, with what each holds.
CLASSES = {
    "ffn": "FFN matmuls (and their activations)",
    "attn_proj": "attention projections (q/k/v and output)",
    "attn_state": "attention state: scores and values over the K/V cache, or the Performer's features and state",
    "conv": "conv module (pointwise, GLU, depthwise)",
    "norm_elementwise": "norms, residual adds and other elementwise work",
    "time_reduction": "input stacking and time reductions",
    "unmapped": "ops whose module path names no class",
    "outside_ops": "framework time outside any op (dispatch, host work)",
}
# The analytic MAC split (variants.analytic.macs_per_step) behind each class's FLOPs.
ANALYTIC_MACS = {"ffn": "ffn", "attn_proj": "attention_proj", "attn_state": "attention_scores",
                 "conv": "conv_module", "time_reduction": "time_reduction"}
TIME_PREFIX = "time_ms_"  # record columns: time_ms_<class>, ms per step
# Every column a profiled record gains (bench.schema lists them with the other keys).
BOUNDED = tuple(c for c in CLASSES if c not in ("unmapped", "outside_ops"))
COLUMNS = (*(TIME_PREFIX + c for c in CLASSES), *(f"bound_ms_{c}" for c in BOUNDED),
           *(f"measured_over_bound_{c}" for c in BOUNDED), "profile_step_ms", "profile_plain_step_ms",
           "profile_scale", "profile_steps", "profile_ops_per_step", "profile_unmapped_share", "profile_source", "profile_error")


@dataclass(frozen=True)
class Op:
    name: str  # the runtime's op name (an HLO instruction, an aten op)
    path: str  # the module path it ran in ("" when the runtime gives none)
    start_s: float
    end_s: float


# A step's state leaves (variants.schedule) and the modules that own them: an op on the state that
# XLA names by the state's argument ("state['blocks'][11]['k']", "state_in_place['blocks'][11]['s']")
# belongs to that module.
STATE_LEAF_MODULE = {**dict.fromkeys(ATTENTION_STATE_KEYS, "mhsa"), "conv": "conv", "stack": "stack"}


def _tokens(path: str) -> set[str]:
    """Module names in a path: 'jit(step_fn)/Encoder.step/blocks_16.step/ffn_1/down/dot_general' ->
    {'blocks', 'ffn', 'down', ...}; list indices ('_16', '.3') dropped; a state argument's leaf as
    the module that owns it."""
    out = set()
    for part in re.split(r"[/.]|[^\w()]+", path):
        part = re.sub(r"_\d+$", "", part)
        if part and not part.isdigit():
            out.add(part)
    if "state" in out or "state_in_place" in out:
        out |= {STATE_LEAF_MODULE[t] for t in out if t in STATE_LEAF_MODULE}
    return out


def op_class(path: str) -> str:
    """The class (a key of CLASSES) of an op run in module `path`."""
    names = _tokens(path)
    if names & {"norm", "conv_norm"}:
        return "norm_elementwise"
    if "mhsa" in names:
        return "attn_proj" if names & {"qkv", "out"} else "attn_state"
    if "ffn" in names:
        return "ffn"
    if "conv" in names:
        return "conv"
    if names & {"stack", "input"}:
        return "time_reduction"
    if "blocks" in names:  # a block's own ops between its sub-layers: residual adds and scaling
        return "norm_elementwise"
    return "unmapped"


def attribute(ops: Iterable[Op], wall_s: float) -> dict[str, float]:
    """Seconds per class over the profiled window of `wall_s` seconds; they sum to `wall_s`.

    Time when k ops run at once is split k ways; time when none runs is `outside_ops`."""
    edges: list[tuple[float, int, str]] = []
    for op in ops:
        if op.end_s > op.start_s:
            cls = op_class(op.path)
            edges += [(op.start_s, 1, cls), (op.end_s, -1, cls)]
    edges.sort(key=lambda e: (e[0], e[1]))
    seconds = dict.fromkeys(CLASSES, 0.0)
    active: dict[str, int] = {}
    busy = 0.0
    previous = None
    for t, delta, cls in edges:
        running = sum(active.values())
        if previous is not None and running and t > previous:
            for name, count in active.items():
                seconds[name] += (t - previous) * count / running
            busy += t - previous
        active[cls] = active.get(cls, 0) + delta
        if not active[cls]:
            del active[cls]
        previous = t
    seconds["outside_ops"] = max(0.0, wall_s - busy)
    return seconds


def class_bounds(spec: Any, batch: int, chunk_frames: int, dtype_bytes: int) -> dict[str, dict[str, float]]:
    """Each class's FLOPs and bytes per step from the analytic counts: weights read by the class, and
    for the attention, conv and stacking classes their state read and written (activations are left
    out, as in bytes_per_step, so the bound is a lower bound)."""
    from variants import analytic

    macs = analytic.macs_per_step(spec, batch, chunk_frames)
    params = analytic.param_breakdown(spec)
    state = analytic.state_bytes_breakdown(spec, batch, dtype_bytes)
    weight = {"ffn": params["ffn"], "attn_proj": params["attention"], "conv": params["conv_module"],
              "norm_elementwise": params["norm"], "time_reduction": params["time_reduction"]}
    state_rw = {"attn_state": 2 * state["attention"], "conv": 2 * state["conv"],
                "time_reduction": 2 * state["time_reduction"]}
    out = {}
    for cls in BOUNDED:
        flops = 2 * macs.get(ANALYTIC_MACS.get(cls, ""), 0)
        nbytes = weight.get(cls, 0) * dtype_bytes + state_rw.get(cls, 0)
        out[cls] = {"flops": float(flops), "bytes": float(nbytes)}
    return out


def summarize(ops: Sequence[Op], wall_s: float, steps: int, step_s: float,
              bounds: Mapping[str, Mapping[str, float]], peak_flops: float | None,
              peak_bytes: float | None) -> dict[str, Any]:
    """Record columns of a profile: time_ms_<class> per step, each class's bound on this machine and
    measured/bound, and the share of unmapped ops.

    A profiler slows what it records (torch.profiler by several us per op on this CPU), so the split
    is measured on the profiled steps and scaled to `step_s`, the step's median timed without the
    profiler in the same session: every class x step_s / profiled step (`profile_scale`)."""
    seconds = attribute(ops, wall_s)
    profiled_step_s = wall_s / steps
    scale = step_s / profiled_step_s if profiled_step_s > 0 else float("nan")
    out: dict[str, Any] = {f"{TIME_PREFIX}{cls}": 1e3 * s / steps * scale for cls, s in seconds.items()}
    out["profile_step_ms"] = 1e3 * profiled_step_s
    out["profile_plain_step_ms"] = 1e3 * step_s
    out["profile_scale"] = scale
    out["profile_steps"] = steps
    out["profile_ops_per_step"] = len(ops) / steps
    out["profile_unmapped_share"] = seconds["unmapped"] / wall_s if wall_s > 0 else None
    if peak_flops and peak_bytes:
        for cls, b in bounds.items():
            bound_ms = 1e3 * max(b["flops"] / peak_flops, b["bytes"] / peak_bytes)
            out[f"bound_ms_{cls}"] = bound_ms
            measured = out[f"{TIME_PREFIX}{cls}"]
            out[f"measured_over_bound_{cls}"] = measured / bound_ms if bound_ms > 0 else None
    return out


def class_table(bounds: Mapping[str, Mapping[str, float]], columns: Mapping[str, Any], dtype: str,
                precision: str) -> dict[str, dict[str, Any]]:
    """Each class beside its own bound, for the run folder's raw profile: its FLOPs and bytes, the
    measured ms per step, and its roofline time on this machine and on every named accelerator."""
    from bench import roofline

    out = {}
    for cls, b in bounds.items():
        named = {key: 1e3 * roofline.roofline_bound_s(b["flops"], b["bytes"], dev, dtype, precision)
                 for key, dev in roofline.NAMED_DEVICES.items()}
        out[cls] = {"flops": b["flops"], "bytes": b["bytes"], "measured_ms": columns.get(TIME_PREFIX + cls),
                    "bound_ms_this_machine": columns.get(f"bound_ms_{cls}"),
                    **{f"bound_ms_{key}": ms for key, ms in named.items()}}
    return out


def raw_ops(ops: Sequence[Op]) -> list[dict[str, Any]]:
    """The profile as the run folder keeps it: every op with its path, class and duration (us)."""
    t0 = min((op.start_s for op in ops), default=0.0)
    return [{"name": op.name, "path": op.path, "class": op_class(op.path),
             "start_us": round(1e6 * (op.start_s - t0), 3), "dur_us": round(1e6 * (op.end_s - op.start_s), 3)}
            for op in ops]
