"""The encoder's layers in PyTorch. Mirrors variants/jax_model.py class by class, with the same names.

Every streaming module has `forward` (full-sequence causal forward), `init_state` and `step`; the
order the blocks and the encoder run them in is variants.schedule's, shared with JAX. Parameters
are kept in the canonical layouts (Dense kernel [in, out], depthwise kernel [K, d]), so
`named_parameters()` names and arrays are the canonical weights shared with JAX. A layer's state
is created on its parameters' device and dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from variants import schedule
from variants.spec import FAVOR_EPS, LN_EPS, RELU_EPS, EncoderSpec, SecondPassSpec
from variants.state import StackBuffer

FRAME_OPS = schedule.FrameOps(
    concat=lambda tensors: torch.cat(tensors, dim=1),
    zeros=lambda like, n: like.new_zeros(like.shape[0], n, like.shape[2]))


class Dense(nn.Module):
    """x @ kernel + bias with kernel [in, out] (flax's layout)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))

    def forward(self, x):
        return torch.matmul(x, self.kernel) + self.bias


class LayerNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.scale, self.bias, LN_EPS)


class TimeReduction(nn.Module):
    """Stacks `factor` consecutive frames and projects them to `out_dim`.

    State: StackBuffer(frames [B, factor-1, in_dim], count) holds frames not yet stacked.
    """

    def __init__(self, in_dim: int, out_dim: int, factor: int):
        super().__init__()
        self.in_dim, self.factor = in_dim, factor
        self.proj = Dense(factor * in_dim, out_dim)

    def forward(self, x):  # a trailing partial group of frames is dropped (streaming buffers it)
        b, t, _ = x.shape
        n = t // self.factor
        if n == 0:  # no whole group: ONNX's Reshape cannot make [batch, 0, ...] with the batch left free
            return self.proj(x[:, :0].repeat(1, 1, self.factor))
        return self.proj(x[:, : n * self.factor].reshape(b, n, self.factor * self.in_dim))

    def init_state(self, batch):
        if self.factor == 1:
            return None
        return StackBuffer(self.proj.kernel.new_zeros(batch, self.factor - 1, self.in_dim), 0)

    def step(self, x, state):
        return schedule.time_reduction_step(self, x, state, FRAME_OPS)


class FeedForward(nn.Module):
    """LayerNorm -> Dense(ffn_dim) -> Swish -> Dense(model_dim); the block adds half of it."""

    def __init__(self, model_dim: int, ffn_dim: int):
        super().__init__()
        self.norm = LayerNorm(model_dim)
        self.up = Dense(model_dim, ffn_dim)
        self.down = Dense(ffn_dim, model_dim)

    def forward(self, x):
        return self.down(F.silu(self.up(self.norm(x))))


class ConvModule(nn.Module):
    """LayerNorm -> Dense(2d) -> GLU -> depthwise conv (kernel K) -> LayerNorm -> Swish -> Dense(d).

    causal=True pads K-1 frames on the left; state conv [B, K-1, d] holds the conv's last K-1
    inputs. causal=False (second pass) pads symmetrically and has no state.
    """

    def __init__(self, model_dim: int, kernel_size: int, causal: bool = True):
        super().__init__()
        self.model_dim, self.kernel_size, self.causal = model_dim, kernel_size, causal
        self.norm = LayerNorm(model_dim)
        self.pointwise_in = Dense(model_dim, 2 * model_dim)
        self.depthwise_kernel = nn.Parameter(torch.empty(kernel_size, model_dim))
        self.depthwise_bias = nn.Parameter(torch.empty(model_dim))
        self.conv_norm = LayerNorm(model_dim)
        self.pointwise_out = Dense(model_dim, model_dim)

    def _glu(self, x):
        a, gate = self.pointwise_in(self.norm(x)).chunk(2, dim=-1)
        return a * torch.sigmoid(gate)

    def _depthwise(self, x):  # x already padded: [B, T + K - 1, d] -> [B, T, d]
        t = x.shape[1] - self.kernel_size + 1
        if t <= schedule.DEPTHWISE_WINDOW_FRAMES:  # output frame i: the kernel placed at input frames i..i+K-1
            frames = [torch.sum(x * F.pad(self.depthwise_kernel, (0, 0, i, t - 1 - i)), dim=1) for i in range(t)]
            return torch.stack(frames, dim=1) + self.depthwise_bias
        weight = self.depthwise_kernel.t().unsqueeze(1)  # [d, 1, K]
        y = F.conv1d(x.transpose(1, 2), weight, self.depthwise_bias, groups=self.model_dim)
        return y.transpose(1, 2)

    def _finish(self, y):
        return self.pointwise_out(F.silu(self.conv_norm(y)))

    def forward(self, x):
        g = self._glu(x)
        k = self.kernel_size
        left = k - 1 if self.causal else (k - 1) // 2
        g = F.pad(g, (0, 0, left, k - 1 - left))
        return self._finish(self._depthwise(g))

    def init_state(self, batch):
        return self.depthwise_kernel.new_zeros(batch, self.kernel_size - 1, self.model_dim)

    def step(self, x, state):
        g = torch.cat([state, self._glu(x)], dim=1)
        kept = self.kernel_size - 1  # split, not slice (see LocalAttention.step)
        return self._finish(self._depthwise(g)), g.split((g.shape[1] - kept, kept), dim=1)[1]


def ring_ages(seen, left: int):
    """age[b, j]: how many frames before the current chunk the frame in cache slot j came (1 = the
    latest), from `seen` [B] (the frames a ring of `left` slots has taken, kept below 2 * left)."""
    return torch.remainder(seen[:, None] - 1 - torch.arange(left, dtype=seen.dtype, device=seen.device), left) + 1


def ring_seen(seen, frames: int, left: int):
    """`seen` after `frames` more, kept below 2 * left: past `left` only its remainder counts."""
    seen = seen + frames
    return torch.where(seen >= left, torch.remainder(seen, left) + left, seen)


def _split_heads(x, num_heads):
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads)


class LocalAttention(nn.Module):
    """Multi-head softmax self-attention over offsets [-right, left] with a learned relative bias.

    The causal first pass uses right=0; state: a ring of the last `left` frames' keys and values,
    k/v [B, heads, left, head_dim], and seen [B] (int32), as in the JAX model. A step reads the cache
    where it lies and returns it with its frames written over the oldest slots. Heads lead the frames
    so both products are plain batched matmuls over (B, heads): with frames first, every step copied
    the whole cache into that order (5x slower at batch 64 on a CPU).
    """

    def __init__(self, model_dim: int, num_heads: int, left: int, right: int = 0):
        super().__init__()
        self.model_dim, self.num_heads, self.left, self.right = model_dim, num_heads, left, right
        self.norm = LayerNorm(model_dim)
        self.qkv = Dense(model_dim, 3 * model_dim)
        self.out = Dense(model_dim, model_dim)
        self.rel_bias = nn.Parameter(torch.empty(num_heads, left + right + 1))

    def _project(self, x):  # -> q, k, v [B, heads, T, head_dim]
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        return tuple(_split_heads(a, self.num_heads).transpose(1, 2) for a in (q, k, v))

    def _attend(self, q, keys, values, offsets, mask):
        """keys/values: blocks of the key axis (the cache, then the chunk's frames), each [B, heads, S_i,
        head_dim]; offsets [B or 1, T, S] = query position - key position; mask [B or 1, T, S]."""
        scale = 1.0 / math.sqrt(self.model_dim // self.num_heads)
        # keys times queries, then the small product transposed: ONNX Runtime fused the transpose of
        # the keys into q @ k^T for the chunk's keys but not for the cache's, which it copied whole
        scores = torch.cat([torch.matmul(k, q.transpose(-1, -2)).transpose(-1, -2) for k in keys], dim=-1) * scale
        index = (offsets + self.right).clamp(0, self.left + self.right).long()  # ONNX gathers by int64
        scores = scores + self.rel_bias[:, index].transpose(0, 1)
        scores = scores.masked_fill(~mask[:, None], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(values[0].dtype)
        parts = probs.split([v.shape[2] for v in values], dim=-1)
        y = sum(torch.matmul(p, v) for p, v in zip(parts, values)).transpose(1, 2)  # [B, T, H, head_dim]
        return self.out(y.reshape(y.shape[0], y.shape[1], self.model_dim))

    def forward(self, x):
        q, k, v = self._project(x)
        chunk = torch.arange(x.shape[1], device=x.device)
        offsets = chunk[:, None] - chunk[None, :]
        mask = (offsets <= self.left) & (offsets >= -self.right)
        return self._attend(q, (k,), (v,), offsets[None], mask[None])

    def init_state(self, batch):
        shape = (batch, self.num_heads, self.left, self.model_dim // self.num_heads)
        like = self.rel_bias
        return {"k": like.new_zeros(shape), "v": like.new_zeros(shape),
                "seen": torch.zeros(batch, dtype=torch.int32, device=like.device)}

    def step(self, x, state):
        q, k, v = self._project(x)
        b, t = x.shape[:2]
        # made on the device from shapes and the state alone: a step uploads nothing from the host
        seen, chunk = state["seen"], torch.arange(t, dtype=torch.int32, device=x.device)
        ages = ring_ages(seen, self.left)  # [B, left]
        cache_offsets = chunk[None, :, None] + ages[:, None, :]  # [B, T, left]
        cache_mask = (cache_offsets <= self.left) & (ages <= seen[:, None])[:, None, :]
        chunk_offsets = chunk[:, None] - chunk[None, :]
        chunk_mask = (chunk_offsets >= 0) & (chunk_offsets <= self.left)
        offsets = torch.cat([cache_offsets, chunk_offsets.expand(b, t, t)], dim=-1)
        mask = torch.cat([cache_mask, chunk_mask.expand(b, t, t)], dim=-1)
        y = self._attend(q, (state["k"], k), (state["v"], v), offsets, mask)
        # the chunk's last `kept` frames go to the ring's oldest slots: (stream, head, slot) of each
        # head_dim row; an index_put is ONNX's ScatterND, which ran 4x faster than ScatterElements there
        kept = min(t, self.left)
        slots = torch.remainder(seen[:, None] + chunk[t - kept:], self.left).long()  # [B, kept]
        where = (torch.arange(b, device=x.device)[:, None, None],
                 torch.arange(self.num_heads, device=x.device)[None, :, None], slots[:, None, :])
        new_state = {name: torch.index_put(state[name], where, new[:, :, t - kept:])
                     for name, new in (("k", k), ("v", v))}
        return y, {**new_state, "seen": ring_seen(seen, t, self.left)}


# ---- Performer (FAVOR+) ------------------------------------------------------------------------
def favor_features(x, projection, kernel: str, is_query: bool):
    """phi(x) for x [B, T, H, dh] (scaled by dh^-1/4), projection [m, dh] -> [B, T, H, m].

    The same features as the JAX model's (its docstring says why queries drop two factors).
    """
    m = projection.shape[0]
    wx = torch.matmul(x, projection.t())
    if kernel == "relu":
        return F.relu(wx) / math.sqrt(m) + RELU_EPS
    if is_query:
        return torch.exp(wx - torch.amax(wx, dim=-1, keepdim=True).detach()) + FAVOR_EPS
    return (torch.exp(wx - 0.5 * torch.sum(x * x, dim=-1, keepdim=True)) + FAVOR_EPS) / math.sqrt(m)


def favor_prefix_sum(pq, pk, v):
    s = torch.cumsum(torch.einsum("bthm,bthd->bthmd", pk, v), dim=1)
    z = torch.cumsum(pk, dim=1)
    num = torch.einsum("bthm,bthmd->bthd", pq, s)
    den = torch.einsum("bthm,bthm->bth", pq, z)
    return num / den[..., None]


def favor_quadratic(pq, pk, v):
    t = pq.shape[1]
    a = torch.einsum("bthm,bshm->bhts", pq, pk) * torch.tril(torch.ones(t, t, dtype=pq.dtype, device=pq.device))
    return torch.einsum("bhts,bshd->bthd", a, v) / a.sum(-1).permute(0, 2, 1)[..., None]


def favor_step(pq, pk, v, s, z):
    """One chunk of the recurrence. Heads lead the chunk's frames inside, so every product is a
    batched matmul over (B, heads) (general einsums ran 3-5x slower in ONNX Runtime)."""
    t = pq.shape[1]
    pq, pk, v = (a.transpose(1, 2) for a in (pq, pk, v))  # [B, H, T, .]
    a = torch.matmul(pq, pk.transpose(-1, -2)) * torch.tril(torch.ones(t, t, dtype=pq.dtype, device=pq.device))
    num = torch.matmul(pq, s) + torch.matmul(a, v)
    den = torch.matmul(pq, z[..., None])[..., 0] + a.sum(-1)
    s = s + torch.matmul(pk.transpose(-1, -2), v)
    z = z + pk.sum(2)
    return (num / den[..., None]).transpose(1, 2), s, z


class PerformerAttention(nn.Module):
    """RNNAttention-Performer: causal FAVOR+ attention as a recurrence; state s [B,H,m,dh], z [B,H,m]."""

    def __init__(self, model_dim: int, num_heads: int, num_features: int, kernel: str = "softmax"):
        super().__init__()
        self.model_dim, self.num_heads, self.num_features, self.kernel = model_dim, num_heads, num_features, kernel
        self.norm = LayerNorm(model_dim)
        self.qkv = Dense(model_dim, 3 * model_dim)
        self.out = Dense(model_dim, model_dim)
        self.features = nn.Parameter(torch.empty(num_features, model_dim // num_heads), requires_grad=False)

    def _phi(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        scale = (self.model_dim // self.num_heads) ** -0.25
        q, k, v = (_split_heads(a, self.num_heads) for a in (q, k, v))
        pq = favor_features(q * scale, self.features, self.kernel, is_query=True)
        pk = favor_features(k * scale, self.features, self.kernel, is_query=False)
        return pq, pk, v

    def _out(self, y):
        return self.out(y.reshape(y.shape[0], y.shape[1], self.model_dim))

    def forward(self, x):
        return self._out(favor_prefix_sum(*self._phi(x)))

    def quadratic(self, x):
        return self._out(favor_quadratic(*self._phi(x)))

    def init_state(self, batch):
        dh = self.model_dim // self.num_heads
        return {"s": self.features.new_zeros(batch, self.num_heads, self.num_features, dh),
                "z": self.features.new_zeros(batch, self.num_heads, self.num_features)}

    def step(self, x, state):
        y, s, z = favor_step(*self._phi(x), state["s"], state["z"])
        return self._out(y), {"s": s, "z": z}


# ---- blocks and encoder -----------------------------------------------------------------------
class Block(nn.Module):
    """One encoder block: optional time reduction, then the sub-layers in spec.block_order with residuals.

    kind "conformer" has attention, kind "conv" skips it. State (variants.schedule.block_init_state):
    a dict with stack (time reduction), conv, and k/v/seen (local) or s/z (performer).
    """

    def __init__(self, spec: EncoderSpec, index: int):
        super().__init__()
        self.spec, d = spec, spec.model_dim
        factor = spec.reduction_before(index)
        self.stack = TimeReduction(d, d, factor) if index > 0 and factor > 1 else None
        self.ffn = nn.ModuleList(FeedForward(d, spec.ffn_dim) for _ in range(spec.block_order.count("ffn")))
        self.conv = ConvModule(d, spec.conv_kernel, True)
        self.mhsa = None
        if spec.block_kinds[index] == "conformer":
            if spec.attention == "local":
                self.mhsa = LocalAttention(d, spec.num_heads, spec.left_context, 0)
            else:
                self.mhsa = PerformerAttention(d, spec.num_heads, spec.performer_features, spec.performer_kernel)
        self.norm = LayerNorm(d) if "norm" in spec.block_order else None

    def forward(self, x):
        return schedule.block_forward(self, x)

    def init_state(self, batch):
        return schedule.block_init_state(self, batch)

    def step(self, x, state):
        return schedule.block_step(self, x, state)


class SecondPassBlock(nn.Module):
    """Non-causal Conformer block: FF/2 -> conv (same padding) -> full attention -> FF/2 -> LN."""

    def __init__(self, sp: SecondPassSpec):
        super().__init__()
        d = sp.model_dim
        self.ffn1 = FeedForward(d, sp.ffn_dim)
        self.conv = ConvModule(d, sp.conv_kernel, False)
        self.mhsa = LocalAttention(d, sp.num_heads, sp.segment_frames - 1, sp.segment_frames - 1)
        self.ffn2 = FeedForward(d, sp.ffn_dim)
        self.norm = LayerNorm(d)

    def forward(self, x):
        x = x + 0.5 * self.ffn1(x)
        x = x + self.conv(x)
        x = x + self.mhsa(x)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


class SecondPass(nn.Module):
    """Cascade second pass over first-pass outputs, segment by segment (each segment on its own)."""

    def __init__(self, sp: SecondPassSpec, input_dim: int):
        super().__init__()
        self.sp = sp
        self.proj = Dense(input_dim, sp.model_dim)
        self.blocks = nn.ModuleList(SecondPassBlock(sp) for _ in range(sp.num_blocks))

    def forward(self, y):
        return schedule.second_pass_forward(self, y, FRAME_OPS)


class Encoder(nn.Module):
    """The causal first pass: input stacking layer, then the blocks. x [B, T, input_dim] -> [B, T', d]."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.input = TimeReduction(spec.input_dim, spec.model_dim, spec.input_stack)
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.num_blocks))
        self.second_pass = SecondPass(spec.second_pass, spec.model_dim) if spec.second_pass else None

    def forward(self, x):
        return schedule.encoder_forward(self, x)

    def init_state(self, batch):
        return schedule.encoder_init_state(self, batch)

    def step(self, x, state):
        return schedule.encoder_step(self, x, state)
