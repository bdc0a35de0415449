"""Framework-neutral description of a streaming encoder: frozen dataclasses, no framework import.

Both the JAX/Flax and the PyTorch model are built from an `EncoderSpec`; the analytic counters in
`variants.analytic` read the same fields, so a number is never kept in two places.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

BLOCK_KINDS = ("conformer", "conv")  # "conv": Lingvo's layer_order='conv', no attention at all
ATTENTION_KINDS = ("local", "performer")
PERFORMER_KERNELS = ("softmax", "relu")
# The sub-layer names block_order may use (variants.schedule runs them in its order); "mhsa" is
# skipped in conv-only blocks.
SUBLAYERS = ("ffn", "conv", "mhsa", "norm")
# FF -> Conv -> MHSA -> FF -> LN: the block order summaries of the paper give (the abstract does not).
DEFAULT_BLOCK_ORDER = ("ffn", "conv", "mhsa", "ffn", "norm")
# The numerics both models compute with (variants.jax_model and variants.torch_model read them here).
LN_EPS = 1e-5
FAVOR_EPS = 1e-6  # added to softmax-kernel features (FAVOR+ reference value)
RELU_EPS = 1e-3  # added to ReLU-kernel features (FAVOR+ reference value)


@dataclass(frozen=True)
class SecondPassSpec:
    """Non-causal cascade second pass: Conformer blocks with full attention inside a segment.

    A segment of `segment_frames` first-pass frames is encoded at once, so the first frame of a
    segment sees the whole segment ahead of it (its right context) and the second pass lags the
    first by one segment. The paper does not give the right context; Google's cascaded encoders
    typically give the second pass ~900 ms, which is 30 frames at 30 ms or 15 frames at 60 ms.
    """

    model_dim: int = 512
    num_heads: int = 8
    ffn_dim: int = 2048
    conv_kernel: int = 15
    num_blocks: int = 4
    segment_frames: int = 30

    def validate(self) -> None:
        _check_positive(self, ("model_dim", "num_heads", "ffn_dim", "conv_kernel", "num_blocks", "segment_frames"), "second_pass.")
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"second_pass.model_dim={self.model_dim} is not divisible by second_pass.num_heads={self.num_heads}"
            )


@dataclass(frozen=True)
class EncoderSpec:
    """A causal streaming Conformer-family encoder as a stack of blocks.

    Defaults are the `baseline` variant; where each number comes from:
    - 17 blocks x model_dim 512, 8 heads, conv kernel 32: Conformer-L (Gulati et al. 2020), the
      closest public shape to the paper's baseline (NeMo's streaming FastConformer uses 17 x 512 too).
    - ffn_dim 2560 (5 x d, not Conformer-L's 4 x d): ours, so the encoder lands at ~121M parameters,
      the ~120M summaries of the paper give; with it the MACs per 30 ms frame (~122M) match ~247M FLOPs/frame.
    - input_dim 128 log-mel at 10 ms, stacked x3 to 30 ms frames: Google's front end uses 128-dim
      log-mel at a 30 ms encoder frame rate; plain non-overlapping stacking is our simplification.
    - left_context 64 frames (1.92 s at 30 ms): ours (the paper does not give it).
    Time reduction: `reductions` holds (position, factor) pairs; a reduction at position p stacks
    `factor` consecutive frames and projects them back to model_dim before block p. Position 0 is
    the input layer (it projects input_dim * factor -> model_dim); without one the input layer is a
    plain projection (factor 1).
    """

    input_dim: int = 128
    model_dim: int = 512
    num_heads: int = 8
    ffn_dim: int = 2560
    conv_kernel: int = 32
    num_blocks: int = 17
    conv_only_blocks: int = 0  # the lowest N blocks have no attention (optimization 1)
    attention: str = "local"  # "local": softmax attention over a K/V cache; "performer": FAVOR+
    left_context: int = 64  # past frames a local-attention query sees (the current frame is extra)
    performer_features: int = 32  # m random features per head
    performer_kernel: str = "softmax"
    reductions: tuple[tuple[int, int], ...] = ((0, 3),)
    block_order: tuple[str, ...] = DEFAULT_BLOCK_ORDER
    dropout: float = 0.0  # inference harness: dropout is always off; kept so specs say so
    input_frame_ms: float = 10.0
    second_pass: SecondPassSpec | None = None

    # ---- derived -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def block_kinds(self) -> tuple[str, ...]:
        return ("conv",) * self.conv_only_blocks + ("conformer",) * (self.num_blocks - self.conv_only_blocks)

    @property
    def input_stack(self) -> int:
        return dict(self.reductions).get(0, 1)

    def reduction_before(self, block: int) -> int:
        """Stacking factor applied before `block` (1 = none); block 0's is the input layer's."""
        return dict(self.reductions).get(block, 1)

    def block_stride(self, block: int) -> int:
        """Input frames per frame at `block`'s rate (cumulative stacking up to and including it)."""
        stride = 1
        for position, factor in self.reductions:
            if position <= block:
                stride *= factor
        return stride

    @property
    def output_stride(self) -> int:
        """Input frames per output frame."""
        stride = 1
        for _, factor in self.reductions:
            stride *= factor
        return stride

    @property
    def output_frame_ms(self) -> float:
        return self.input_frame_ms * self.output_stride

    # ---- checks and (de)serialisation ----------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_positive(self, ("input_dim", "model_dim", "num_heads", "ffn_dim", "conv_kernel", "num_blocks"))
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim={self.model_dim} is not divisible by num_heads={self.num_heads}")
        if not 0 <= self.conv_only_blocks <= self.num_blocks:
            raise ValueError(
                f"conv_only_blocks={self.conv_only_blocks} must be between 0 and num_blocks={self.num_blocks}"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={self.attention!r} is not one of {ATTENTION_KINDS}")
        if self.left_context < 1:
            raise ValueError(f"left_context={self.left_context} must be >= 1 frame")
        if self.performer_features < 1:
            raise ValueError(f"performer_features={self.performer_features} must be >= 1 (m random features)")
        if self.performer_kernel not in PERFORMER_KERNELS:
            raise ValueError(f"performer_kernel={self.performer_kernel!r} is not one of {PERFORMER_KERNELS}")
        positions = [p for p, _ in self.reductions]
        if len(set(positions)) != len(positions):
            raise ValueError(f"reductions={self.reductions} name a position twice")
        for position, factor in self.reductions:
            if not 0 <= position < self.num_blocks:
                raise ValueError(f"reductions: position {position} is not a block index in [0, {self.num_blocks})")
            if factor < 1:
                raise ValueError(f"reductions: factor {factor} at position {position} must be >= 1")
        if self.block_order.count("mhsa") != 1 or self.block_order.count("conv") != 1:
            raise ValueError(f"block_order={self.block_order} must hold 'conv' and 'mhsa' exactly once")
        if unknown := set(self.block_order) - set(SUBLAYERS):
            raise ValueError(f"block_order names unknown sub-layers {sorted(unknown)}; known: {SUBLAYERS}")
        if self.dropout != 0.0:
            raise ValueError(f"dropout={self.dropout}: this is an inference harness, dropout must be 0")
        if self.second_pass is not None:
            self.second_pass.validate()

    def replace(self, **changes: Any) -> "EncoderSpec":
        return dataclasses.replace(self, **changes)

    def with_text_overrides(self, overrides: dict[str, str]) -> "EncoderSpec":
        """This spec with fields set from text (`bench run --set left_context=128`), each value read as
        the field's type; a field that is unknown, not a number or a name, or a value the spec rejects
        raises SpecOverrideError naming the field."""
        changes = {name: parse_field(name, text) for name, text in overrides.items()}
        try:
            return self.replace(**changes)
        except ValueError as e:
            raise SpecOverrideError(f"--set {', '.join(f'{k}={v}' for k, v in overrides.items())}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["reductions"] = [list(r) for r in self.reductions]
        out["block_order"] = list(self.block_order)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - known:
            raise ValueError(f"unknown spec fields {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        if "reductions" in data:
            data["reductions"] = tuple(tuple(r) for r in data["reductions"])
        if "block_order" in data:
            data["block_order"] = tuple(data["block_order"])
        if isinstance(data.get("second_pass"), dict):
            data["second_pass"] = SecondPassSpec(**data["second_pass"])
        return cls(**data)


class SpecOverrideError(ValueError):
    """A spec field set from text that cannot be: unknown, not settable, or a value the spec rejects."""


def settable_fields() -> dict[str, type]:
    """The EncoderSpec fields `--set` can change (numbers and names), with their types."""
    return {f.name: type(f.default) for f in dataclasses.fields(EncoderSpec)
            if type(f.default) in (int, float, str) and f.name != "dropout"}


def parse_field(name: str, text: str) -> Any:
    """`text` as the value of spec field `name` (SpecOverrideError when it is not one)."""
    fields = settable_fields()
    if name not in fields:
        known = {f.name for f in dataclasses.fields(EncoderSpec)}
        why = "cannot be set from the command line" if name in known else "is not a spec field"
        raise SpecOverrideError(f"--set {name}: {why}; settable: {', '.join(fields)}")
    kind = fields[name]
    try:
        return kind(text) if kind is not int else int(text, 10)
    except ValueError:
        raise SpecOverrideError(f"--set {name}={text}: expected {'an integer' if kind is int else 'a number'}") from None


def _check_positive(obj: Any, names: tuple[str, ...], prefix: str = "") -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{prefix}{name}={value!r} must be a positive integer")
