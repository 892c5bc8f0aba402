"""Eager DepthScaleModel -> ONNX model (onnx-ir), via torch.onnx (dynamo) and our graph passes.

The graph: inputs input_ids int64 [batch, seq], max_iters int64 [], tol float32 []; outputs logits
float32 [batch, seq, vocab], iterations int64 [batch, seq]. The recursion is one Loop whose body
reads the weights from the outer scope; BitLinear and WindowAttention are "depthscale" nodes.
"""

from __future__ import annotations

import logging
import warnings

import onnx_ir as ir
import torch

from depthscale import DepthScaleModel

from .passes import attach_functions, rename_dims, strip_metadata
from .ops import translation_table

INPUT_NAMES = ["input_ids", "max_iters", "tol"]
OUTPUT_NAMES = ["logits", "iterations"]
DEFAULT_OPSET = 18


class ExportWrapper(torch.nn.Module):
    """The ONNX interface over a packed model: max_iters is clamped to [0, cap]; logits are float32
    whatever the model's precision."""

    def __init__(self, model: DepthScaleModel, cap: int):
        super().__init__()
        self.model, self.cap = model, cap

    def forward(self, input_ids, max_iters, tol):
        out = self.model(input_ids, torch.clamp(max_iters, 0, self.cap), tol)
        return out.logits.float(), out.iterations


def export_onnx(model: DepthScaleModel, cap: int, opset: int = DEFAULT_OPSET) -> ir.Model:
    """Export a packed, eval-mode model; returns the onnx-ir model with function bodies attached and
    metadata stripped."""
    onnx_model = export_graph(model, cap, opset)
    finish_graph(onnx_model)
    return onnx_model


def export_graph(model: DepthScaleModel, cap: int, opset: int = DEFAULT_OPSET,
                 wrapper: torch.nn.Module | None = None, optimize: bool = True) -> ir.Model:
    """torch.onnx (dynamo) export of a packed, eval-mode model, with the interface's dim names.

    wrapper: the module to export, taking (input_ids, max_iters, tol) and returning (logits,
    iterations); default ExportWrapper(model, cap), the artifact's interface. (tools/bench passes an
    unrolled variant.) optimize: run torch.onnx's onnxscript optimizer (superlinear in graph size:
    minutes on an unrolled recursion). Raises whatever torch.onnx raises on failure."""
    cfg = model.config
    example = (torch.randint(0, cfg.vocab_size, (2, 8)), torch.tensor(2, dtype=torch.int64),
               torch.tensor(0.0, dtype=torch.float32))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    seq = torch.export.Dim("seq", min=1, max=cfg.max_seq_len)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)                  # e.g. "torchvision is not installed"
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper or ExportWrapper(model, cap), example, dynamo=True, opset_version=opset, optimize=optimize,
                input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, verbose=False, report=False,
                dynamic_shapes=({0: batch, 1: seq}, None, None),
                custom_translation_table=translation_table())
    finally:
        onnx_logger.setLevel(level)
    onnx_model = program.model
    batch_sym, seq_sym = (d.value for d in onnx_model.graph.inputs[0].shape)
    rename_dims(onnx_model, {batch_sym: "batch", seq_sym: "seq"})
    return onnx_model


def finish_graph(onnx_model: ir.Model) -> None:
    """The passes every artifact gets: function bodies for the custom ops, no metadata."""
    attach_functions(onnx_model)
    strip_metadata(onnx_model)
