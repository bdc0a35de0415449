"""The encoder's layers in JAX/Flax (linen). Mirrors variants/torch_model.py class by class.

Every streaming module has `__call__` (full-sequence causal forward), `init_state` and `step`; the
order the blocks and the encoder run them in is variants.schedule's, shared with PyTorch.
Parameter layouts are the canonical ones (Dense kernel [in, out], depthwise kernel [K, D]), so
flattened names and arrays are the same in both frameworks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from variants import schedule
from variants.spec import FAVOR_EPS, LN_EPS, RELU_EPS, EncoderSpec, SecondPassSpec
from variants.state import StackBuffer

jax.tree_util.register_dataclass(StackBuffer, data_fields=["frames"], meta_fields=["count"])

FRAME_OPS = schedule.FrameOps(
    concat=lambda arrays: jnp.concatenate(arrays, axis=1),
    zeros=lambda like, n: jnp.zeros((like.shape[0], n, like.shape[2]), like.dtype))


def _layer_norm(dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=dtype)


class TimeReduction(nn.Module):
    """Stacks `factor` consecutive frames and projects them to `out_dim`.

    State: StackBuffer(frames [B, factor-1, in_dim], count) holds frames not yet stacked; the count
    is static (part of the pytree structure), so a chunk that completes no frame emits none.
    """

    in_dim: int
    out_dim: int
    factor: int
    dtype: Any = jnp.float32

    def setup(self):
        self.proj = nn.Dense(self.out_dim, dtype=self.dtype, param_dtype=self.dtype)

    def __call__(self, x):  # a trailing partial group of frames is dropped (streaming buffers it)
        b, t, _ = x.shape
        n = t // self.factor
        return self.proj(x[:, : n * self.factor].reshape(b, n, self.factor * self.in_dim))

    def init_state(self, batch):
        if self.factor == 1:
            return None
        return StackBuffer(jnp.zeros((batch, self.factor - 1, self.in_dim), self.dtype), 0)

    def step(self, x, state):
        return schedule.time_reduction_step(self, x, state, FRAME_OPS)


class FeedForward(nn.Module):
    """LayerNorm -> Dense(ffn_dim) -> Swish -> Dense(model_dim); the block adds half of it."""

    model_dim: int
    ffn_dim: int
    dtype: Any = jnp.float32

    def setup(self):
        self.norm = _layer_norm(self.dtype)
        self.up = nn.Dense(self.ffn_dim, dtype=self.dtype, param_dtype=self.dtype)
        self.down = nn.Dense(self.model_dim, dtype=self.dtype, param_dtype=self.dtype)

    def __call__(self, x):
        return self.down(nn.swish(self.up(self.norm(x))))


class ConvModule(nn.Module):
    """LayerNorm -> Dense(2d) -> GLU -> depthwise conv (kernel K) -> LayerNorm -> Swish -> Dense(d).

    causal=True pads K-1 frames on the left; the streaming state is the conv's last K-1 inputs,
    conv [B, K-1, d]. causal=False (second pass) pads symmetrically and has no state. LayerNorm
    instead of BatchNorm after the conv keeps it free of cross-time statistics.
    """

    model_dim: int
    kernel_size: int
    causal: bool = True
    dtype: Any = jnp.float32

    def setup(self):
        d = self.model_dim
        self.norm = _layer_norm(self.dtype)
        self.pointwise_in = nn.Dense(2 * d, dtype=self.dtype, param_dtype=self.dtype)
        self.depthwise_kernel = self.param("depthwise_kernel", nn.initializers.lecun_normal(in_axis=0, out_axis=1),
                                           (self.kernel_size, d), self.dtype)
        self.depthwise_bias = self.param("depthwise_bias", nn.initializers.zeros, (d,), self.dtype)
        self.conv_norm = _layer_norm(self.dtype)
        self.pointwise_out = nn.Dense(d, dtype=self.dtype, param_dtype=self.dtype)

    def _glu(self, x):
        a, gate = jnp.split(self.pointwise_in(self.norm(x)), 2, axis=-1)
        return a * nn.sigmoid(gate)

    def _depthwise(self, x):  # x already padded: [B, T + K - 1, d] -> [B, T, d]
        k = self.kernel_size
        t = x.shape[1] - k + 1
        if t <= schedule.DEPTHWISE_WINDOW_FRAMES:
            # Output frame i is sum_j x[i + j] * kernel[j]: summed here tap by tap over shifted
            # windows, elementwise work that XLA fuses into one loop. PyTorch's form (a product with
            # the kernel placed at each frame, then a sum over the window axis) became a reduce that
            # XLA:CPU ran 5-10x slower (jax 0.10.2, K=32, d=384: 0.20 ms a block at b=1, 2.1-3.6 ms
            # at b=64; this form 0.02-0.06 and 0.35-0.42)
            y = x[:, :t] * self.depthwise_kernel[0]
            for j in range(1, k):
                y = y + x[:, j:j + t] * self.depthwise_kernel[j]
            return y + self.depthwise_bias
        y = jax.lax.conv_general_dilated(
            x, self.depthwise_kernel[:, None, :], window_strides=(1,), padding="VALID",
            dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=self.model_dim)
        return y + self.depthwise_bias

    def _finish(self, y):
        return self.pointwise_out(nn.swish(self.conv_norm(y)))

    def __call__(self, x):
        g = self._glu(x)
        k = self.kernel_size
        left = k - 1 if self.causal else (k - 1) // 2
        g = jnp.pad(g, ((0, 0), (left, k - 1 - left), (0, 0)))
        return self._finish(self._depthwise(g))

    def init_state(self, batch):
        return jnp.zeros((batch, self.kernel_size - 1, self.model_dim), self.dtype)

    def step(self, x, state):
        g = jnp.concatenate([state, self._glu(x)], axis=1)
        kept = self.kernel_size - 1
        return self._finish(self._depthwise(g)), jnp.split(g, [g.shape[1] - kept], axis=1)[1]


def ring_ages(seen, left: int):
    """age[b, j]: how many frames before the current chunk the frame in cache slot j came (1 = the
    latest), from `seen` [B] (the frames a ring of `left` slots has taken, kept below 2 * left)."""
    return (seen[:, None] - 1 - jnp.arange(left, dtype=seen.dtype)) % left + 1


def ring_seen(seen, frames: int, left: int):
    """`seen` after `frames` more, kept below 2 * left: past `left` only its remainder counts."""
    seen = seen + frames
    return jnp.where(seen >= left, seen % left + left, seen)


def _split_heads(x, num_heads):
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads)


class LocalAttention(nn.Module):
    """Multi-head softmax self-attention over a window of offsets [-right, left] around each query.

    Relative positions: a learned bias per head per offset (T5-style, bounded window), which stays
    exact in streaming. The causal first pass uses right=0; its state is a ring of the projected keys
    and values of the last `left` frames, k/v [B, heads, left, head_dim], and seen [B] (int32: the
    frames the ring has taken, which says each slot's age and whether it holds a frame yet). A step
    writes its frames over the oldest slots and reads the rest where they lie: a cache that shifted
    by the chunk was copied whole every step, 30 of the baseline's 132 ms at batch 64 on the reference
    CPU. The second pass uses a symmetric window and no state. Heads lead the frames so both products
    batch over (B, heads) with no copy of the cache into that order.
    """

    model_dim: int
    num_heads: int
    left: int
    right: int = 0
    dtype: Any = jnp.float32

    def setup(self):
        d = self.model_dim
        self.norm = _layer_norm(self.dtype)
        self.qkv = nn.Dense(3 * d, dtype=self.dtype, param_dtype=self.dtype)
        self.out = nn.Dense(d, dtype=self.dtype, param_dtype=self.dtype)
        self.rel_bias = self.param("rel_bias", nn.initializers.zeros, (self.num_heads, self.left + self.right + 1),
                                   self.dtype)

    def _project(self, x):
        q, k, v = jnp.split(self.qkv(self.norm(x)), 3, axis=-1)  # -> q, k, v [B, heads, T, head_dim]
        return tuple(jnp.swapaxes(_split_heads(a, self.num_heads), 1, 2) for a in (q, k, v))

    def _attend(self, q, keys, values, offsets, mask):
        """keys/values: blocks of the key axis (the cache, then this chunk's frames), each [B, heads, S_i,
        head_dim], used where they lie; offsets [B or 1, T, S] = query position - key position over all
        of them; mask [B or 1, T, S] marks visible keys."""
        scale = float(self.model_dim // self.num_heads) ** -0.5  # a Python float stays weakly typed (bf16 stays bf16)
        scores = jnp.concatenate([jnp.einsum("bhtd,bhsd->bhts", q, k) for k in keys], axis=-1) * scale
        bias = self.rel_bias[:, jnp.clip(offsets + self.right, 0, self.left + self.right)]  # [H, B, T, S]
        scores = scores + jnp.swapaxes(bias, 0, 1)
        scores = jnp.where(mask[:, None], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(values[0].dtype)
        parts = np.cumsum([v.shape[2] for v in values])[:-1]
        y = sum(jnp.einsum("bhts,bhsd->bhtd", p, v) for p, v in zip(jnp.split(probs, parts, axis=-1), values))
        # heads leave the product first and are moved after it: asked for [B, T, H, dh] directly, XLA:CPU
        # ran it as a generic dot at a tenth of the speed (one block at batch 64: 2.4 ms against 0.24 ms)
        y = jnp.swapaxes(y, 1, 2)
        return self.out(y.reshape(y.shape[0], y.shape[1], self.model_dim))

    def __call__(self, x):
        q, k, v = self._project(x)
        t = x.shape[1]
        offsets = np.arange(t)[:, None] - np.arange(t)[None, :]
        mask = (offsets <= self.left) & (offsets >= -self.right)
        return self._attend(q, (k,), (v,), jnp.asarray(offsets)[None], jnp.asarray(mask)[None])

    def init_state(self, batch):
        shape = (batch, self.num_heads, self.left, self.model_dim // self.num_heads)
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype),
                "seen": jnp.zeros((batch,), jnp.int32)}

    def step(self, x, state):
        q, k, v = self._project(x)
        b, t = x.shape[:2]
        seen, chunk = state["seen"], np.arange(t)
        ages = ring_ages(seen, self.left)  # [B, left]
        cache_offsets = chunk[None, :, None] + ages[:, None, :]  # [B, T, left]
        cache_mask = (cache_offsets <= self.left) & (ages <= seen[:, None])[:, None, :]
        chunk_offsets = chunk[:, None] - chunk[None, :]
        chunk_mask = (chunk_offsets >= 0) & (chunk_offsets <= self.left)
        offsets = jnp.concatenate([cache_offsets, jnp.broadcast_to(chunk_offsets, (b, t, t))], axis=-1)
        mask = jnp.concatenate([cache_mask, jnp.broadcast_to(chunk_mask, (b, t, t))], axis=-1)
        y = self._attend(q, (state["k"], k), (state["v"], v), offsets, mask)
        # the chunk's last `kept` frames go to the ring's oldest slots; donated, k/v are written in place
        # (on a CPU, with variants.jax_encoder.STEP_COMPILER_OPTIONS)
        kept = min(t, self.left)
        slots = (seen[:, None] + np.arange(t - kept, t)) % self.left  # [B, kept]
        rows = jnp.arange(b)[:, None]
        new_state = {name: state[name].at[rows, :, slots].set(jnp.swapaxes(new[:, :, t - kept:], 1, 2))
                     for name, new in (("k", k), ("v", v))}
        return y, {**new_state, "seen": ring_seen(seen, t, self.left)}


# ---- Performer (FAVOR+) ------------------------------------------------------------------------
def favor_features(x, projection, kernel: str, is_query: bool):
    """phi(x) for x [B, T, H, dh] (already scaled by dh^-1/4) with projection [m, dh] -> [B, T, H, m].

    softmax kernel: m^-1/2 (exp(w.x - |x|^2/2 - c) + eps). For keys c = 0: w.x - |x|^2/2 <= |w|^2/2,
    so the features are bounded by exp(|w|^2/2) and need no data-dependent stabilizer (the reference
    codes' max over the whole time axis cannot stream). For queries c is the per-token max over
    features, which takes |x|^2/2 with it: exp(w.x - max w.x), and without m^-1/2, a constant that
    cancels between numerator and denominator as c does. Queries are read only there, so the output
    is the same with 5 fewer ops per block (ONNX nodes; no step got measurably faster, +-2%).
    """
    m = projection.shape[0]
    wx = jnp.matmul(x, projection.T)
    if kernel == "relu":
        return jax.nn.relu(wx) * float(m) ** -0.5 + RELU_EPS
    if is_query:
        return jnp.exp(wx - jax.lax.stop_gradient(jnp.max(wx, axis=-1, keepdims=True))) + FAVOR_EPS
    return (jnp.exp(wx - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)) + FAVOR_EPS) * float(m) ** -0.5


def favor_prefix_sum(pq, pk, v):
    """Causal linear attention in parallel form: running sums by cumsum over time."""
    s = jnp.cumsum(jnp.einsum("bthm,bthd->bthmd", pk, v), axis=1)
    z = jnp.cumsum(pk, axis=1)
    num = jnp.einsum("bthm,bthmd->bthd", pq, s)
    den = jnp.einsum("bthm,bthm->bth", pq, z)
    return num / den[..., None]


def favor_quadratic(pq, pk, v):
    """Causal linear attention in explicit form: masked phi(Q) phi(K)^T, normalised by its row sums."""
    t = pq.shape[1]
    a = jnp.einsum("bthm,bshm->bhts", pq, pk) * jnp.tril(jnp.ones((t, t), pq.dtype))
    return jnp.einsum("bhts,bshd->bthd", a, v) / jnp.sum(a, axis=-1).transpose(0, 2, 1)[..., None]


def favor_step(pq, pk, v, s, z):
    """Recurrent form over a chunk: the carried sums S [B,H,m,dh], z [B,H,m] plus the chunk's causal part.

    Heads lead the chunk's frames inside, so every product is a batched matmul over (B, heads)."""
    t = pq.shape[1]
    pq, pk, v = (jnp.swapaxes(a, 1, 2) for a in (pq, pk, v))  # [B, H, T, .]
    a = jnp.matmul(pq, jnp.swapaxes(pk, -1, -2)) * jnp.tril(jnp.ones((t, t), pq.dtype))
    num = jnp.matmul(pq, s) + jnp.matmul(a, v)
    den = jnp.matmul(pq, z[..., None])[..., 0] + jnp.sum(a, axis=-1)
    s = s + jnp.matmul(jnp.swapaxes(pk, -1, -2), v)
    z = z + jnp.sum(pk, axis=2)
    return jnp.swapaxes(num / den[..., None], 1, 2), s, z


class PerformerAttention(nn.Module):
    """RNNAttention-Performer: causal FAVOR+ attention run as a recurrence.

    The random projection (orthogonal Gaussian rows, [m, head_dim], shared by the heads) is drawn
    once from the seed (variants.init) and stored as a weight. State: s [B, heads, m, head_dim] and
    z [B, heads, m], fixed size whatever the context. No positional term: the conv module supplies
    relative position.
    """

    model_dim: int
    num_heads: int
    num_features: int
    kernel: str = "softmax"
    dtype: Any = jnp.float32

    def setup(self):
        d, dh = self.model_dim, self.model_dim // self.num_heads
        self.norm = _layer_norm(self.dtype)
        self.qkv = nn.Dense(3 * d, dtype=self.dtype, param_dtype=self.dtype)
        self.out = nn.Dense(d, dtype=self.dtype, param_dtype=self.dtype)
        # drawn by variants.init (orthogonal Gaussian rows); the initializer here only gives the shape
        self.features = self.param("features", nn.initializers.zeros, (self.num_features, dh), self.dtype)

    def _phi(self, x):
        q, k, v = jnp.split(self.qkv(self.norm(x)), 3, axis=-1)
        dh = self.model_dim // self.num_heads
        scale = dh ** -0.25
        q, k, v = (_split_heads(a, self.num_heads) for a in (q, k, v))
        pq = favor_features(q * scale, self.features, self.kernel, is_query=True)
        pk = favor_features(k * scale, self.features, self.kernel, is_query=False)
        return pq, pk, v

    def _out(self, y):
        return self.out(y.reshape(y.shape[0], y.shape[1], self.model_dim))

    def __call__(self, x):
        return self._out(favor_prefix_sum(*self._phi(x)))

    def quadratic(self, x):
        return self._out(favor_quadratic(*self._phi(x)))

    def init_state(self, batch):
        dh = self.model_dim // self.num_heads
        return {"s": jnp.zeros((batch, self.num_heads, self.num_features, dh), self.dtype),
                "z": jnp.zeros((batch, self.num_heads, self.num_features), self.dtype)}

    def step(self, x, state):
        y, s, z = favor_step(*self._phi(x), state["s"], state["z"])
        return self._out(y), {"s": s, "z": z}


# ---- blocks and encoder -----------------------------------------------------------------------
class Block(nn.Module):
    """One encoder block: optional time reduction, then the sub-layers in spec.block_order with residuals.

    kind "conformer" has attention, kind "conv" skips it. State (variants.schedule.block_init_state):
    a dict with stack (time reduction), conv, and k/v/seen (local) or s/z (performer).
    """

    spec: EncoderSpec
    index: int
    dtype: Any = jnp.float32

    def setup(self):
        spec, d = self.spec, self.spec.model_dim
        factor = spec.reduction_before(self.index)
        self.stack = TimeReduction(d, d, factor, self.dtype) if self.index > 0 and factor > 1 else None
        self.ffn = [FeedForward(d, spec.ffn_dim, self.dtype) for _ in range(spec.block_order.count("ffn"))]
        self.conv = ConvModule(d, spec.conv_kernel, True, self.dtype)
        self.mhsa = None
        if spec.block_kinds[self.index] == "conformer":
            if spec.attention == "local":
                self.mhsa = LocalAttention(d, spec.num_heads, spec.left_context, 0, self.dtype)
            else:
                self.mhsa = PerformerAttention(d, spec.num_heads, spec.performer_features, spec.performer_kernel,
                                               self.dtype)
        self.norm = _layer_norm(self.dtype) if "norm" in spec.block_order else None

    def __call__(self, x):
        return schedule.block_forward(self, x)

    def init_state(self, batch):
        return schedule.block_init_state(self, batch)

    def step(self, x, state):
        return schedule.block_step(self, x, state)


class SecondPassBlock(nn.Module):
    """Non-causal Conformer block: FF/2 -> conv (same padding) -> full attention -> FF/2 -> LN."""

    sp: SecondPassSpec
    dtype: Any = jnp.float32

    def setup(self):
        sp, d = self.sp, self.sp.model_dim
        self.ffn1 = FeedForward(d, sp.ffn_dim, self.dtype)
        self.conv = ConvModule(d, sp.conv_kernel, False, self.dtype)
        self.mhsa = LocalAttention(d, sp.num_heads, sp.segment_frames - 1, sp.segment_frames - 1, self.dtype)
        self.ffn2 = FeedForward(d, sp.ffn_dim, self.dtype)
        self.norm = _layer_norm(self.dtype)

    def __call__(self, x):
        x = x + 0.5 * self.ffn1(x)
        x = x + self.conv(x)
        x = x + self.mhsa(x)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


class SecondPass(nn.Module):
    """Cascade second pass over first-pass outputs, segment by segment (each segment on its own)."""

    sp: SecondPassSpec
    input_dim: int
    dtype: Any = jnp.float32

    def setup(self):
        self.proj = nn.Dense(self.sp.model_dim, dtype=self.dtype, param_dtype=self.dtype)
        self.blocks = [SecondPassBlock(self.sp, self.dtype) for _ in range(self.sp.num_blocks)]

    def __call__(self, y):
        return schedule.second_pass_forward(self, y, FRAME_OPS)


class Encoder(nn.Module):
    """The causal first pass: input stacking layer, then the blocks. x [B, T, input_dim] -> [B, T', d]."""

    spec: EncoderSpec
    dtype: Any = jnp.float32

    def setup(self):
        spec = self.spec
        self.input = TimeReduction(spec.input_dim, spec.model_dim, spec.input_stack, self.dtype)
        self.blocks = [Block(spec, i, self.dtype) for i in range(spec.num_blocks)]
        self.second_pass = SecondPass(spec.second_pass, spec.model_dim, self.dtype) if spec.second_pass else None

    def __call__(self, x):
        return schedule.encoder_forward(self, x)

    def init_state(self, batch):
        return schedule.encoder_init_state(self, batch)

    def step(self, x, state):
        return schedule.encoder_step(self, x, state)

    def run_second_pass(self, y):
        return self.second_pass(y)

    def init_all(self, x):  # touches every submodule so `init` creates all parameters
        y = self(x)
        return self.second_pass(y) if self.second_pass is not None else y
