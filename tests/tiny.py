"""Small versions of the registered variants: same structure (block kinds, attention kind, reductions,
second pass), dimensions small enough that both frameworks build and run in milliseconds."""

import numpy as np

import variants
from variants import EncoderSpec, SecondPassSpec


def tiny(spec: EncoderSpec) -> EncoderSpec:
    num_blocks = 3
    reductions = tuple((min(p, 2), f) for p, f in spec.reductions)
    second = None
    if spec.second_pass is not None:
        second = SecondPassSpec(model_dim=24, num_heads=2, ffn_dim=32, conv_kernel=3, num_blocks=2, segment_frames=4)
    return spec.replace(input_dim=12, model_dim=32, num_heads=4, ffn_dim=48, conv_kernel=4, num_blocks=num_blocks,
                        conv_only_blocks=min(spec.conv_only_blocks, 1), left_context=5, performer_features=16,
                        reductions=reductions, second_pass=second)


def tiny_variants() -> dict[str, EncoderSpec]:
    return {name: tiny(variants.get(name).spec) for name in variants.names()}


def stream(enc, x, schedule):
    """Encode x [B, T, D] chunk by chunk (sizes from `schedule`) through `enc.step`, outputs concatenated."""
    state, outputs, pos = enc.init_state(x.shape[0]), [], 0
    for size in schedule:
        y, state = enc.step(x[:, pos: pos + size], state)
        outputs.append(y)
        pos += size
    return np.concatenate(outputs, axis=1)
