"""FLOP counters for one streaming step, each reporting FLOPs = 2 x multiply-adds (MACs).

Four tools, each with the blind spots listed below, normalised to one unit:
- XLA cost analysis of the compiled JAX step (`xla_count`): counts 2 per MAC already, plus every
  elementwise op and reduction; exp/tanh/... go to `transcendentals`. Best effort: may be None.
- torch.utils.flop_counter.FlopCounterMode on the PyTorch step (`flop_counter_mode_count`):
  2 per MAC already; only matmul/conv/SDPA families are counted (einsum lowers to bmm and is
  counted); we add the CPU flash-SDPA kernel it leaves at 0.
- fvcore FlopCountAnalysis on the PyTorch step (`fvcore_count`): fvcore counts 1 per MAC, so its
  numbers are doubled here. Handlers are added for the ops it is blind to (scaled_dot_product_attention,
  baddbmm, conv1d/convolution) and for those it approximates (einsum via numpy's path finder,
  matmul with a broadcast second operand). It also counts layer norms (not MACs): they stay in
  its total and are left out of its `matmul_flops`.

- the exported ONNX graph (`onnx_count`): MatMul, Gemm, Conv and Einsum nodes (and their int8
  forms MatMulInteger / DynamicQuantizeMatMul) from their shapes after ONNX shape inference, 2 per MAC.

So FlopCounterMode, fvcore's `matmul_flops`, the ONNX count and the analytic count share one scope, the
"matmul/conv part": dense projections, batched matmuls/einsums (attention scores and values,
Performer features, state update and readout) and convolutions, except that a streaming step runs
its depthwise convs as elementwise multiply and sum (`variants.analytic.depthwise_macs_per_step`:
under 1% of a full-size step), which only XLA's total and the analytic count include. XLA's total also holds
elementwise work and its per-op split is not exposed, so its total is what is compared (at full
model width elementwise work is under 1% of a step). No counter crashes a run: when a tool
cannot count, it returns `flops=None` with a one-line `reason`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

MATMUL_OP_WORDS = ("mm", "matmul", "linear", "conv", "einsum", "attention", "bmm")


@dataclass
class FlopCount:
    source: str  # "xla" | "flop_counter_mode" | "fvcore"
    flops: int | None  # FLOPs = 2 x MACs; None when the tool could not count
    reason: str | None = None  # why flops is None
    by_op: dict[str, int] = field(default_factory=dict)  # FLOPs per operator, where the tool says
    transcendentals: int | None = None  # XLA only
    bytes_accessed: int | None = None  # XLA only: its own traffic estimate (activations included)

    @property
    def matmul_flops(self) -> int | None:
        """FLOPs of matmul/conv/attention operators (the scope the analytic MACs cover)."""
        if self.flops is None:
            return None
        if not self.by_op:
            return self.flops
        return sum(v for k, v in self.by_op.items() if any(w in k.lower() for w in MATMUL_OP_WORDS))


def _unavailable(source: str, reason: str | BaseException) -> FlopCount:
    if isinstance(reason, BaseException):
        reason = f"{type(reason).__name__}: {str(reason).strip().splitlines()[0] if str(reason).strip() else ''}"
    return FlopCount(source, None, reason=f"{source} could not count: {reason}")


# ---- XLA ---------------------------------------------------------------------------------------
def xla_count(compiled: Any) -> FlopCount:
    """FLOPs of a compiled JAX computation from `compiled.cost_analysis()`.

    Handles the dict (current JAX), list-of-dicts (older JAX: one per computation, the first is
    the entry computation) and None (backend without cost analysis) forms. Note a scan/while body
    is counted once, not per trip, which is why we count one streaming step."""
    try:
        analysis = compiled.cost_analysis()
    except Exception as e:  # noqa: BLE001
        return _unavailable("xla", e)
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or not isinstance(analysis, dict):
        return _unavailable("xla", "cost_analysis() returned nothing on this backend")
    flops = analysis.get("flops")
    if flops is None or flops < 0:
        return _unavailable("xla", "cost_analysis() has no 'flops' entry")

    def _int(key: str) -> int | None:
        v = analysis.get(key)
        return int(v) if v is not None and v >= 0 else None

    return FlopCount("xla", int(flops), transcendentals=_int("transcendentals"), bytes_accessed=_int("bytes accessed"))


# ---- torch FlopCounterMode ---------------------------------------------------------------------
def _flop_counter_extras() -> dict:
    """Formulas FlopCounterMode lacks: the CPU flash-attention kernel counts 0 out of the box."""
    import torch
    from torch.utils.flop_counter import flop_registry, sdpa_flop_count

    aten = torch.ops.aten
    extras = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            extras[op] = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    return extras


def flop_counter_mode_count(run: Callable[[], Any]) -> FlopCount:
    """FLOPs of `run()` (one PyTorch step) under torch.utils.flop_counter.FlopCounterMode."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False, custom_mapping=_flop_counter_extras()) as counter:
            run()
        by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
        return FlopCount("flop_counter_mode", int(counter.get_total_flops()), by_op=by_op)
    except Exception as e:  # noqa: BLE001
        return _unavailable("flop_counter_mode", e)


# ---- fvcore ------------------------------------------------------------------------------------
def _shape(value: Any) -> list[int] | None:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(value)


def _einsum_macs(equation: str, shapes: list[list[int]]) -> int:
    """Exact MACs of a two-operand einsum: the product of every index's size (contracted or not).

    More operands fall back to numpy's optimal contraction path (numpy's FLOP count / 2)."""
    import numpy as np

    equation = equation.replace(" ", "")
    inputs = equation.split("->")[0].split(",")
    if len(inputs) == 2 and "..." not in equation:
        sizes: dict[str, int] = {}
        for letters, shape in zip(inputs, shapes):
            sizes.update(zip(letters, shape))
        return math.prod(sizes.values())
    views = [np.lib.stride_tricks.as_strided(np.zeros(1), s, [0] * len(s)) for s in shapes]  # no memory
    report = np.einsum_path(equation, *views, optimize="optimal")[1]
    for line in report.splitlines():
        if "optimized flop" in line.lower():
            return int(float(line.split(":")[-1]) / 2)
    return 0


def _fvcore_handles() -> dict[str, Callable | None]:
    def einsum(inputs, outputs):
        equation = inputs[0].toIValue()
        shapes = [_shape(v) for v in inputs[1].node().inputs()]
        return _einsum_macs(equation, shapes)

    def matmul(inputs, outputs):  # out [..., m, n] from a [..., m, k]: exact under broadcasting
        return math.prod(_shape(outputs[0])) * _shape(inputs[0])[-1]

    def baddbmm(inputs, outputs):  # beta * input + batch1 @ batch2
        b, m, k = _shape(inputs[1])
        n = _shape(inputs[2])[-1]
        return b * m * k * n

    def conv(inputs, outputs):  # conv1d/conv2d/convolution: input, weight, bias, ..., groups last-ish
        w = _shape(inputs[1])
        out = _shape(outputs[0])
        # out [N, C_out, *spatial]; weight [C_out, C_in / groups, *kernel]
        return out[0] * math.prod(out[2:]) * math.prod(w)

    def sdpa(inputs, outputs):  # q [..., L, E], k [..., S, E], v [..., S, Ev]
        q, k, v = (_shape(inputs[i]) for i in range(3))
        batch = math.prod(q[:-2])
        return batch * q[-2] * k[-2] * (q[-1] + v[-1])

    return {
        "aten::einsum": einsum,
        "aten::matmul": matmul,
        "aten::baddbmm": baddbmm,
        "aten::conv1d": conv,
        "aten::conv2d": conv,
        "aten::convolution": conv,
        "aten::scaled_dot_product_attention": sdpa,
    }


def fvcore_count(module: Any, inputs: tuple) -> FlopCount:
    """FLOPs (2 x fvcore's MACs) of `module(*inputs)` with fvcore's FlopCountAnalysis.

    fvcore traces with torch.jit, so `module.forward` must take and return tensors (or tuples of them)."""
    try:
        import torch

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fvcore scripts/traces with the deprecated torch.jit
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(module, inputs).set_op_handle(**_fvcore_handles())
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
            by_op = {op: 2 * int(macs) for op, macs in analysis.by_operator().items()}
            total = 2 * int(analysis.total())
        return FlopCount("fvcore", total, by_op=by_op)
    except Exception as e:  # noqa: BLE001
        return _unavailable("fvcore", e)


# ---- ONNX graph ----------------------------------------------------------------------------------
ONNX_MATMUL_OPS = ("MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "Gemm", "Conv", "Einsum")


def onnx_count(path: Any, batch: int | None = None) -> FlopCount:
    """FLOPs of an ONNX model's MatMul/Gemm/Conv/Einsum nodes (2 x MACs), from the static shapes ONNX's
    shape inference gives every value. `batch`: the size of the graph's one free dimension (the step
    graphs leave the batch free), set on its inputs and outputs before inference."""
    try:
        import onnx
        from onnx import shape_inference

        model = onnx.load(str(path))
        for value in (*model.graph.input, *model.graph.output) if batch is not None else ():
            for dim in value.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.dim_value = batch
        model = shape_inference.infer_shapes(model)
        shapes: dict[str, list[int]] = {}
        for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                shapes[value.name] = [d.dim_value for d in dims]
        shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
        by_op: dict[str, int] = {}
        for node in model.graph.node:
            if node.op_type not in ONNX_MATMUL_OPS:
                continue
            ins = [shapes.get(name) for name in node.input]
            out = shapes.get(node.output[0])
            if out is None or any(s is None for s in ins[:2]):
                return _unavailable("onnx", f"no static shape for {node.op_type} node {node.name!r}")
            if node.op_type == "Einsum":
                equation = next(a.s.decode() for a in node.attribute if a.name == "equation")
                macs = _einsum_macs(equation, ins)
            elif node.op_type == "Conv":  # out [N, C_out, *spatial], weight [C_out, C_in / groups, *kernel]
                macs = math.prod(out) * math.prod(ins[1][1:])
            elif node.op_type == "Gemm":
                trans_a = any(a.name == "transA" and a.i for a in node.attribute)
                macs = math.prod(out) * ins[0][0 if trans_a else -1]
            else:  # MatMul and its int8 forms: out [..., m, n] from a [..., m, k]
                macs = math.prod(out) * ins[0][-1]
            by_op[node.op_type] = by_op.get(node.op_type, 0) + 2 * macs
        return FlopCount("onnx", sum(by_op.values()), by_op=by_op)
    except Exception as e:  # noqa: BLE001
        return _unavailable("onnx", e)
