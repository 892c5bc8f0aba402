"""Eager DepthScaleModel -> ONNX models (onnx-ir), via torch.onnx (dynamo) and our graph passes.

An artifact holds up to three graphs, each a GraphSpec: the whole-sequence forward (model.onnx), and
for incremental decoding the prefill and decode graphs (depthscale_export.decode). Every graph takes
each row's budget, so that requests with different budgets batch together:

    model.onnx   input_ids int64 [batch, seq], lengths int64 [batch], max_iters int64 [batch],
                 tol float32 [batch] -> logits float32 [batch, seq, vocab], iterations int64 [batch, seq]

The recursion is one Loop whose body reads the weights from the outer scope; BitLinear, GatedBitLinear,
WindowAttention and CachedAttention are "depthscale" nodes.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import onnx_ir as ir
import torch

from depthscale import DepthScaleModel

from .passes import attach_functions, rename_dims, strip_metadata
from .ops import translation_table

DEFAULT_OPSET = 18
BUDGET_NAMES = ["lengths", "max_iters", "tol"]


@dataclass
class GraphSpec:
    """One graph of the artifact: the module torch.onnx exports, example inputs (no dim of size 0 or 1
    where the dim is dynamic: torch.export specialises those), names, and dynamic dims by input."""
    name: str                                   # "model", "prefill" or "decode": the file is NAME.onnx
    module: torch.nn.Module
    example: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, str]]          # input name -> {axis: dim name ("batch", "seq", "new", "capacity")}

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


def example_budgets(batch: int, seq: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """lengths, max_iters, tol examples for a batch (distinct tensors: torch.export aliases repeated ones)."""
    return (torch.full((batch,), seq, dtype=torch.int64), torch.full((batch,), 2, dtype=torch.int64),
            torch.zeros(batch, dtype=torch.float32))


class ForwardWrapper(torch.nn.Module):
    """model.onnx: the whole-sequence pass over a packed model. max_iters is clamped to [0, cap]; logits
    are float32 whatever the model's precision."""

    def __init__(self, model: DepthScaleModel, cap: int):
        super().__init__()
        self.model, self.cap = model, cap

    def forward(self, input_ids, lengths, max_iters, tol):
        out = self.model(input_ids, torch.clamp(max_iters, 0, self.cap), tol, lengths)
        return out.logits.float(), out.iterations


def forward_spec(model: DepthScaleModel, cap: int, module: torch.nn.Module | None = None) -> GraphSpec:
    """The forward graph; module: another module with its interface (tools/bench exports an unrolled one)."""
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    return GraphSpec("model", module or ForwardWrapper(model, cap), (ids, *example_budgets(2, 8)),
                     ["input_ids", *BUDGET_NAMES], ["logits", "iterations"],
                     {"input_ids": {0: "batch", 1: "seq"}, **{name: {0: "batch"} for name in BUDGET_NAMES}})


def export_graph(model: DepthScaleModel, spec: GraphSpec, opset: int = DEFAULT_OPSET, optimize: bool = True) -> ir.Model:
    """torch.onnx (dynamo) export of one graph of a packed, eval-mode model, its dims named as the spec
    says. optimize: run torch.onnx's onnxscript optimizer (superlinear in graph size: minutes on an
    unrolled recursion). Raises whatever torch.onnx raises on failure."""
    dims: dict[str, torch.export.Dim] = {}
    cfg = model.config
    upper = {"batch": 1 << 20, "seq": cfg.max_seq_len, "new": cfg.max_seq_len,
             "capacity": cfg.max_seq_len * (1 + cfg.reason_tokens)}

    def dim(name: str) -> torch.export.Dim:
        return dims.setdefault(name, torch.export.Dim(name, min=1, max=upper[name]))

    dynamic_shapes = tuple({axis: dim(n) for axis, n in spec.dynamic[name].items()} if name in spec.dynamic else None
                           for name in spec.input_names)
    # quiet: torch.onnx ("torchvision is not installed"), onnx-ir ("Attribute type is ambiguous" for the
    # empty attribute lists of the active set's index ops)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                spec.module, spec.example, dynamo=True, opset_version=opset, optimize=optimize,
                input_names=spec.input_names, output_names=spec.output_names, verbose=False, report=False,
                dynamic_shapes=dynamic_shapes, custom_translation_table=translation_table())
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    onnx_model = program.model
    names = {}
    for value, name in zip(onnx_model.graph.inputs, spec.input_names):
        for axis, dim_name in spec.dynamic.get(name, {}).items():
            names[value.shape[axis].value] = dim_name
    rename_dims(onnx_model, names)
    return onnx_model


def finish_graph(onnx_model: ir.Model) -> None:
    """The passes every graph gets: function bodies for the custom ops, no metadata."""
    attach_functions(onnx_model)
    strip_metadata(onnx_model)


def export_onnx(model: DepthScaleModel, cap: int, opset: int = DEFAULT_OPSET) -> ir.Model:
    """The forward graph of a packed, eval-mode model, with function bodies attached and metadata
    stripped (self-contained: weights inline)."""
    onnx_model = export_graph(model, forward_spec(model, cap), opset)
    finish_graph(onnx_model)
    return onnx_model
