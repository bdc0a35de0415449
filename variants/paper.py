"""The paper's variants, declared as specs: the ablation ladder first, then each idea alone.

Ladder (the order `--variant all` walks): baseline -> conv_lower -> conv_lower_downsized ->
practical -> practical_cascade. Every number marked "ours" is one the paper does not give.
"""

from variants.registry import register
from variants.spec import EncoderSpec, SecondPassSpec

# Optimization 1: the lowest 4 blocks become conv-only (4 is the common guess; ours).
CONV_ONLY_BLOCKS = 4

# Optimization 2, downsizing (ours): d 512 -> 384 with
# 6 heads (head_dim stays 64) and FFN 5d -> 4d (2560 -> 1536) halve every block's weights
# (~2.1x fewer parameters); a 2x frame stacking before block 4 runs the 13 upper blocks at 60 ms,
# halving their per-second cost, and the left context shrinks to 32 frames so attention still
# spans 1.92 s at 60 ms.
DOWNSIZED = dict(model_dim=384, num_heads=6, ffn_dim=1536, reductions=((0, 3), (4, 2)), left_context=32)

# Optimization 3: RNNAttention-Performer with m=32 positive softmax features per head (ours):
# its state (heads x m x head_dim + heads x m) is half a 32-frame K/V cache and never grows.
PERFORMER = dict(attention="performer", performer_features=32, performer_kernel="softmax")

# Optimization 4: 4 non-causal Conformer blocks of 512 over 900 ms segments (ours).
SECOND_PASS_30MS = SecondPassSpec(segment_frames=30)  # 30 x 30 ms = 900 ms
SECOND_PASS_60MS = SecondPassSpec(segment_frames=15)  # 15 x 60 ms = 900 ms


@register("Causal streaming Conformer: 17 x 512, 8 heads, local attention over 64 past frames (~121M params)")
def baseline() -> EncoderSpec:
    return EncoderSpec()


@register("Ladder step 1: baseline with the lowest 4 blocks conv-only (no attention, no K/V cache)")
def conv_lower() -> EncoderSpec:
    return EncoderSpec(conv_only_blocks=CONV_ONLY_BLOCKS)


@register("Ladder step 2: conv_lower, downsized to d=384 with the upper 13 blocks at 60 ms")
def conv_lower_downsized() -> EncoderSpec:
    return EncoderSpec(conv_only_blocks=CONV_ONLY_BLOCKS, **DOWNSIZED)


@register("Ladder step 3: all first-pass optimizations: conv-only lower + downsizing + Performer attention")
def practical() -> EncoderSpec:
    return EncoderSpec(conv_only_blocks=CONV_ONLY_BLOCKS, **DOWNSIZED, **PERFORMER)


@register("Ladder step 4: practical first pass + non-causal 4-block second pass over 900 ms segments")
def practical_cascade() -> EncoderSpec:
    return practical().replace(second_pass=SECOND_PASS_60MS)


@register("Downsizing alone: d=384, FFN 1536, upper 13 blocks at 60 ms")
def downsized() -> EncoderSpec:
    return EncoderSpec(**DOWNSIZED)


@register("Performer alone: baseline with causal FAVOR+ attention (m=32) in every block")
def performer() -> EncoderSpec:
    return EncoderSpec(**PERFORMER)


@register("Cascade alone: baseline first pass + non-causal 4-block second pass over 900 ms segments")
def cascade() -> EncoderSpec:
    return EncoderSpec(second_pass=SECOND_PASS_30MS)
