"""What decides an exported ONNX graph's content: the PyTorch step wrapped for the exporter, the export
call and int8 quantisation. variants.onnx_encoder names its cached files by a hash of this file (with
the PyTorch model's), so a change here exports anew and a change to how graphs are kept or run does not.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from variants.state import array_leaves, named_arrays, with_arrays

OPSET = 18
QUANTIZED_OPS = ("MatMul",)  # what dtype "int8" quantises: every MatMul with a constant weight


class Flat(torch.nn.Module):
    """A method of the encoder module over flat tensors, as the exporter takes them: (x, *state arrays)
    -> (y, *next-state arrays). The state's ints (buffer counts) are fixed in the template: one phase."""

    def __init__(self, module: torch.nn.Module, method: str, template: Any = None):
        super().__init__()
        self.module, self.method, self.template = module, method, template

    def forward(self, x, *arrays):
        if self.template is None:
            return getattr(self.module, self.method)(x)
        y, state = self.module.step(x, with_arrays(self.template, arrays))
        return (y, *array_leaves(state))


@contextlib.contextmanager
def _cudnn_flags_torch_export_can_read():
    """torch.export reads the legacy `cudnn.allow_tf32`, which raises in torch 2.13 once cuDNN's conv
    precision is "ieee" (as bench's `precision = highest` sets it in a process that also runs PyTorch).
    An export computes nothing, so the default is restored around it."""
    cudnn = getattr(torch.backends.cudnn, "conv", None)
    if cudnn is None or not hasattr(cudnn, "fp32_precision"):
        yield
        return
    saved = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision)
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision = saved


@contextlib.contextmanager
def _steps_as_module_calls(root: torch.nn.Module):
    """Run each sub-layer's `step` through the module's own call while exporting, so the exporter's
    name scopes (its record of which module an op ran in) name the layer of every op of a step, as
    they do for `forward`: ONNX Runtime's profile then classes each node by its layer. Only the
    metadata changes; instance attributes shadow the class's methods and are removed on exit."""
    wrapped = []
    for name, module in root.named_modules():
        if not name or not hasattr(type(module), "step"):
            continue
        forward, step = module.forward, module.step

        def dispatch(*args, _bench_step=False, _forward=forward, _step=step, **kwargs):
            return _step(*args, **kwargs) if _bench_step else _forward(*args, **kwargs)

        module.forward = dispatch
        module.step = lambda *args, _module=module: _module(*args, _bench_step=True)
        wrapped.append(module)
    try:
        yield
    finally:
        for module in wrapped:
            del module.forward, module.step


@contextlib.contextmanager
def _quiet_export():
    """The exporter logs a warning per torchvision op it cannot register and warns about deprecations; a
    run's log should show the run."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export(module: Flat, example: tuple, path: Path, dynamic_batch: bool = False) -> None:
    """Export `module` on the example inputs to `path`: inputs `x` and `state.<path>`, outputs `y` and
    `next.<path>` (variants.state's paths). `dynamic_batch`: every input's first dimension is the
    batch, left free in the graph (the example's must be 2 or more: torch.export fixes a size-1 one)."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = ({0: batch}, tuple({0: batch} for _ in example[1:]))  # Flat's (x, *state)
    names = ["x"]
    outputs = ["y"]
    if module.template is not None:
        paths = [p for p, _ in named_arrays(module.template)]
        names += [f"state.{p}" for p in paths]
        outputs += [f"next.{p}" for p in paths]
    with (_quiet_export(), _cudnn_flags_torch_export_can_read(), _steps_as_module_calls(module.module),
          torch.inference_mode()):
        program = torch.onnx.export(module.eval(), example, dynamo=True, opset_version=OPSET, input_names=names,
                                    output_names=outputs, dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(str(path))


def quantize(float_path: Path, path: Path, reduce_range: bool) -> None:
    """ONNX Runtime's dynamic int8 quantisation of the float graph's QUANTIZED_OPS weights, to `path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises pre-processing, once per call, on the root logger
    try:
        quantize_dynamic(str(float_path), str(path), op_types_to_quantize=list(QUANTIZED_OPS),
                         weight_type=QuantType.QInt8, reduce_range=reduce_range)
    finally:
        root.setLevel(level)
