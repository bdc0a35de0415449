"""The encoder's schedule, written once for both frameworks: which sub-layer runs when, full-sequence
or streaming, and how the streaming state is laid out and threaded through the layers.

jax_model.py and torch_model.py hold the layers; their TimeReduction, Block, Encoder and SecondPass
call these functions on themselves, so the two frameworks cannot drift apart in order or state
layout. Arrays are touched only through the layers given and the `FrameOps` of their framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from variants.state import StackBuffer

# A block's attention keeps its state beside "stack" and "conv" in the block's dict: k/v/seen
# (local) or s/z (Performer).
ATTENTION_STATE_KEYS = ("k", "v", "seen", "s", "z")

# A depthwise conv over at most this many output frames (a streaming step's) runs as one
# multiply-and-sum over the kernel's window per frame: it reads the window once and runs 3-4x
# faster than the frameworks' grouped conv kernels at such lengths on a CPU (PyTorch's conv1d,
# ONNX Runtime's Conv, XLA's grouped convolution). Longer inputs (the full forward) use the conv.
DEPTHWISE_WINDOW_FRAMES = 8


@dataclass(frozen=True)
class FrameOps:
    """The array operations the schedule needs from a framework; arrays are [batch, frames, dim]."""

    concat: Callable[[Sequence[Any]], Any]  # along the frame axis
    zeros: Callable[[Any, int], Any]  # (like, n) -> n zero frames with like's batch, dim, dtype and device


# ---- time reduction --------------------------------------------------------------------------
def time_reduction_step(layer: Any, x: Any, buffer: StackBuffer | None, ops: FrameOps):
    """Stack the buffered frames and the chunk `factor` at a time; keep the remainder for the next chunk.

    The buffer always holds factor-1 frames (zero-padded past `count`), so its bytes do not depend
    on where in the stacking cycle a chunk ends."""
    if layer.factor == 1:
        return layer(x), buffer
    x = ops.concat([buffer.frames[:, : buffer.count], x])
    used = (x.shape[1] // layer.factor) * layer.factor
    rest = x[:, used:]
    pad = ops.zeros(x, layer.factor - 1 - rest.shape[1])
    return layer(x), StackBuffer(ops.concat([rest, pad]), rest.shape[1])


# ---- one block -------------------------------------------------------------------------------
def block_init_state(block: Any, batch: int) -> dict[str, Any]:
    """{"stack": time reduction (blocks that reduce), "conv": conv module, then the attention's keys}."""
    state = {}
    if block.stack is not None:
        state["stack"] = block.stack.init_state(batch)
    state["conv"] = block.conv.init_state(batch)
    if block.mhsa is not None:
        state.update(block.mhsa.init_state(batch))
    return state


def block_forward(block: Any, x: Any) -> Any:
    return _run_block(block, x, None, streaming=False)[0]


def block_step(block: Any, x: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return _run_block(block, x, state, streaming=True)


def _run_block(block: Any, x: Any, state: dict[str, Any] | None, streaming: bool):
    """Optional time reduction, then the sub-layers in spec.block_order: residual FFN halves, conv
    and attention; "mhsa" is skipped in conv-only blocks, "norm" is a plain LayerNorm."""
    new_state = {}
    if block.stack is not None:
        if streaming:
            x, new_state["stack"] = block.stack.step(x, state["stack"])
        else:
            x = block.stack(x)
    if streaming and x.shape[1] == 0:  # no frame completed at this rate yet: nothing else changes
        return x, {**state, **new_state}
    ffn_index = 0
    for name in block.spec.block_order:
        if name == "ffn":
            x = x + 0.5 * block.ffn[ffn_index](x)
            ffn_index += 1
        elif name == "conv":
            if streaming:
                y, new_state["conv"] = block.conv.step(x, state["conv"])
            else:
                y = block.conv(x)
            x = x + y
        elif name == "mhsa" and block.mhsa is not None:
            if streaming:
                y, attention_state = block.mhsa.step(x, {k: state[k] for k in ATTENTION_STATE_KEYS if k in state})
                new_state.update(attention_state)
            else:
                y = block.mhsa(x)
            x = x + y
        elif name == "norm":
            x = block.norm(x)
    return x, new_state


# ---- the encoder -----------------------------------------------------------------------------
def encoder_init_state(encoder: Any, batch: int) -> dict[str, Any]:
    """{"input": the input stacking layer's buffer, "blocks": one state dict per block}."""
    return {"input": encoder.input.init_state(batch), "blocks": tuple(b.init_state(batch) for b in encoder.blocks)}


def encoder_forward(encoder: Any, x: Any) -> Any:
    x = encoder.input(x)
    for block in encoder.blocks:
        x = block(x)
    return x


def encoder_step(encoder: Any, x: Any, state: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    x, input_state = encoder.input.step(x, state["input"])
    block_states = []
    for block, block_state in zip(encoder.blocks, state["blocks"]):
        x, block_state = block.step(x, block_state)
        block_states.append(block_state)
    return x, {"input": input_state, "blocks": tuple(block_states)}


# ---- the cascade second pass -----------------------------------------------------------------
def second_pass_forward(second_pass: Any, y: Any, ops: FrameOps) -> Any:
    """Each segment of `segment_frames` first-pass outputs is encoded on its own (no state between them)."""
    s = second_pass.sp.segment_frames
    segments = []
    for i in range(0, y.shape[1], s):
        x = second_pass.proj(y[:, i: i + s])
        for block in second_pass.blocks:
            x = block(x)
        segments.append(x)
    return ops.concat(segments)
