"""Analytic counts from the spec alone: parameters, streaming-state shapes and bytes, multiply-adds.

These are the ground truth the framework counters (XLA, FlopCounterMode, fvcore) are checked
against, and what the models' own `num_params()` / `state_bytes()` must equal. A multiply-add
(MAC) is one multiplication and one addition; FLOPs = 2 x MACs. Norms, activations, residual
adds and masks are elementwise and are not MACs; exp/sigmoid/rsqrt are counted apart as
transcendentals.

A streaming step consumes `chunk_frames` input feature frames. Every time-reduction layer starts
the step with an empty buffer, which is the steady state when chunk_frames is a multiple of
`spec.output_stride` (otherwise the count describes a step taken from a fresh state).
"""

from __future__ import annotations

from variants.spec import EncoderSpec, SecondPassSpec

INT32_BYTES = 4  # local attention's frame count, whatever the float dtype


# ---- parameters -------------------------------------------------------------------------------
def _ffn_params(d: int, f: int) -> int:
    return 2 * d + (d * f + f) + (f * d + d)  # LayerNorm, up, down


def _conv_module_params(d: int, k: int) -> int:
    # LayerNorm, pointwise d->2d (GLU), depthwise kernel k + bias, LayerNorm, pointwise d->d
    return 2 * d + (2 * d * d + 2 * d) + (k * d + d) + 2 * d + (d * d + d)


def _attention_params(d: int, extra: int) -> int:
    # LayerNorm, fused QKV, output projection, plus a relative bias table or Performer features
    return 2 * d + (3 * d * d + 3 * d) + (d * d + d) + extra


def _attention_extra(spec: EncoderSpec) -> int:
    if spec.attention == "performer":
        return spec.performer_features * spec.head_dim  # fixed random projection, stored as a weight
    return spec.num_heads * (spec.left_context + 1)  # one bias per head per offset 0..L


def param_breakdown(spec: EncoderSpec) -> dict[str, int]:
    d, f = spec.model_dim, spec.ffn_dim
    out = {"time_reduction": spec.input_stack * spec.input_dim * d + d, "ffn": 0, "conv_module": 0,
           "attention": 0, "norm": 0, "second_pass": 0}
    n_ffn, n_norm = spec.block_order.count("ffn"), spec.block_order.count("norm")
    for i, kind in enumerate(spec.block_kinds):
        factor = spec.reduction_before(i)
        if i > 0 and factor > 1:
            out["time_reduction"] += factor * d * d + d
        out["ffn"] += n_ffn * _ffn_params(d, f)
        out["conv_module"] += _conv_module_params(d, spec.conv_kernel)
        if kind == "conformer":
            out["attention"] += _attention_params(d, _attention_extra(spec))
        out["norm"] += n_norm * 2 * d
    if spec.second_pass is not None:
        out["second_pass"] = second_pass_params(spec.model_dim, spec.second_pass)
    return out


def second_pass_params(input_dim: int, sp: SecondPassSpec) -> int:
    d = sp.model_dim
    window = 2 * sp.segment_frames - 1  # relative offsets -(S-1)..(S-1)
    per_block = (2 * _ffn_params(d, sp.ffn_dim) + _conv_module_params(d, sp.conv_kernel)
                 + _attention_params(d, sp.num_heads * window) + 2 * d)
    return input_dim * d + d + sp.num_blocks * per_block


def param_count(spec: EncoderSpec) -> int:
    return sum(param_breakdown(spec).values())


def first_pass_param_count(spec: EncoderSpec) -> int:
    return param_count(spec) - param_breakdown(spec)["second_pass"]


# ---- streaming state --------------------------------------------------------------------------
def state_shapes(spec: EncoderSpec, batch: int) -> dict[str, tuple[tuple[int, ...], str, str]]:
    """path -> (shape, "float"|"int32", category) for every array in the streaming state; the paths
    are those variants.state.named_arrays gives the state a model's init_state returns.

    Categories: "attention" (the ring of keys and values and its frame count, or Performer sums S and z), "conv" (the
    causal depthwise conv's last kernel-1 inputs), "time_reduction" (frames waiting to be stacked).
    """
    b, d, h, dh = batch, spec.model_dim, spec.num_heads, spec.head_dim
    shapes: dict[str, tuple[tuple[int, ...], str, str]] = {}
    if spec.input_stack > 1:
        shapes["input.frames"] = ((b, spec.input_stack - 1, spec.input_dim), "float", "time_reduction")
    for i, kind in enumerate(spec.block_kinds):
        factor = spec.reduction_before(i)
        if i > 0 and factor > 1:
            shapes[f"blocks.{i}.stack.frames"] = ((b, factor - 1, d), "float", "time_reduction")
        shapes[f"blocks.{i}.conv"] = ((b, spec.conv_kernel - 1, d), "float", "conv")
        if kind != "conformer":
            continue
        if spec.attention == "local":
            shapes[f"blocks.{i}.k"] = ((b, h, spec.left_context, dh), "float", "attention")
            shapes[f"blocks.{i}.v"] = ((b, h, spec.left_context, dh), "float", "attention")
            shapes[f"blocks.{i}.seen"] = ((b,), "int32", "attention")
        else:
            m = spec.performer_features
            shapes[f"blocks.{i}.s"] = ((b, h, m, dh), "float", "attention")
            shapes[f"blocks.{i}.z"] = ((b, h, m), "float", "attention")
    return shapes


def _nbytes(shape: tuple[int, ...], kind: str, dtype_bytes: int) -> int:
    n = 1
    for s in shape:
        n *= s
    return n * (INT32_BYTES if kind == "int32" else dtype_bytes)


def state_bytes_breakdown(spec: EncoderSpec, batch: int, dtype_bytes: int = 4) -> dict[str, int]:
    out = {"attention": 0, "conv": 0, "time_reduction": 0}
    for shape, kind, category in state_shapes(spec, batch).values():
        out[category] += _nbytes(shape, kind, dtype_bytes)
    return out


def state_bytes(spec: EncoderSpec, batch: int, dtype_bytes: int = 4) -> int:
    return sum(state_bytes_breakdown(spec, batch, dtype_bytes).values())


# ---- multiply-adds per streaming step ---------------------------------------------------------
def frames_per_block(spec: EncoderSpec, chunk_frames: int) -> list[int]:
    """Frames each block processes in a step of `chunk_frames` input frames (empty buffers)."""
    frames = chunk_frames // spec.input_stack
    out = []
    for i in range(spec.num_blocks):
        if i > 0:
            frames //= spec.reduction_before(i)
        out.append(frames)
    return out


def _attention_macs(spec: EncoderSpec, t: int) -> int:
    d, h = spec.model_dim, spec.num_heads
    if spec.attention == "local":
        return 2 * t * (spec.left_context + t) * d  # QK^T and AV over cache + chunk, masked entries too
    m = spec.performer_features
    # q and k feature projections (2tmd), readout from the carried state (tmd + thm), state update
    # S += phi(k)^T v (tmd), and the within-chunk causal part (t^2 hm scores + t^2 d values)
    return 4 * t * m * d + t * h * m + t * t * h * m + t * t * d


def _depthwise_macs(spec: EncoderSpec, t: int) -> int:
    return t * spec.conv_kernel * spec.model_dim


def depthwise_macs_per_step(spec: EncoderSpec, batch: int, chunk_frames: int) -> int:
    """The depthwise convs' part of conv_module. A streaming step runs them as elementwise multiply
    and sum (variants.schedule.DEPTHWISE_WINDOW_FRAMES), which counters of matrix products (the
    ONNX graph's, FlopCounterMode, fvcore) do not see: under 1% of a full-size step."""
    return batch * sum(_depthwise_macs(spec, t) for t in frames_per_block(spec, chunk_frames))


def macs_per_step(spec: EncoderSpec, batch: int, chunk_frames: int) -> dict[str, int]:
    d, f = spec.model_dim, spec.ffn_dim
    n_ffn = spec.block_order.count("ffn")
    out = {"time_reduction": 0, "ffn": 0, "conv_module": 0, "attention_proj": 0, "attention_scores": 0}
    out["time_reduction"] += (chunk_frames // spec.input_stack) * spec.input_stack * spec.input_dim * d
    for i, (kind, t) in enumerate(zip(spec.block_kinds, frames_per_block(spec, chunk_frames))):
        factor = spec.reduction_before(i)
        if i > 0 and factor > 1:
            out["time_reduction"] += t * factor * d * d
        out["ffn"] += n_ffn * t * 2 * d * f
        out["conv_module"] += t * (2 * d * d + d * d) + _depthwise_macs(spec, t)
        if kind == "conformer":
            out["attention_proj"] += t * 4 * d * d
            out["attention_scores"] += _attention_macs(spec, t)
    return {name: batch * macs for name, macs in out.items()}


def transcendentals_per_step(spec: EncoderSpec, batch: int, chunk_frames: int) -> int:
    """exp/sigmoid/rsqrt evaluations: swish and GLU sigmoids, softmax or feature exps, norm rsqrts."""
    d, f, h = spec.model_dim, spec.ffn_dim, spec.num_heads
    n_ffn, n_norm = spec.block_order.count("ffn"), spec.block_order.count("norm")
    total = 0
    for kind, t in zip(spec.block_kinds, frames_per_block(spec, chunk_frames)):
        total += n_ffn * t * (f + 1)  # swish + LayerNorm
        total += t * (2 * d + 2)  # GLU sigmoid, swish, two LayerNorms
        total += n_norm * t
        if kind == "conformer":
            total += t  # pre-attention LayerNorm
            if spec.attention == "local":
                total += h * t * (spec.left_context + t)
            elif spec.performer_kernel == "softmax":
                total += 2 * t * h * spec.performer_features
    return batch * total


def second_pass_macs_per_segment(spec: EncoderSpec, batch: int) -> int:
    """Multiply-adds to encode one segment of the second pass (0 when there is none)."""
    sp = spec.second_pass
    if sp is None:
        return 0
    d, s = sp.model_dim, sp.segment_frames
    per_block = (2 * s * 2 * d * sp.ffn_dim + s * (3 * d * d + sp.conv_kernel * d)
                 + s * 4 * d * d + 2 * s * s * d)
    return batch * (s * spec.model_dim * d + sp.num_blocks * per_block)
