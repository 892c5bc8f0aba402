"""The custom ops as TensorRT plugins, described once for every flavor (full TensorRT's
tensorrt.plugin adapter in depthscale_export.engines.plugins, TensorRT-RTX's IPluginV3 adapter in
depthscale_runtime.rtx_plugins). Needs neither TensorRT nor torch.

One PluginOp per ONNX op_type of domain "depthscale" (plugin name = op_type, namespace "depthscale",
version "1"): its inputs with the dtypes the ONNX parser delivers them in, its int attributes, its
output's shape rule, the Triton kernel that computes it and that kernel's launch. Adding an op is adding
one entry to PLUGINS (and its Triton kernel in depthscale.kernels.aot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

NAMESPACE, VERSION = "depthscale", "1"
ACTIVATION = "activation"          # the graph's float dtype: float32, float16 or bfloat16 (one per plugin call)
ACTIVATION_DTYPES = ("float32", "float16", "bfloat16")
TRITON_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# the dtypes TensorRT's ONNX parser converts before any layer or plugin sees them (measured with
# TensorRT-RTX 1.7.1: "UINT8 data ... is being converted to INT32" for initializers; float64 values and
# casts to DOUBLE become float32 without a word)
PARSER_CONVERTS = {"uint8": "int32", "float64": "float32"}


def trt_dtype_names(trt) -> dict:
    """TensorRT DataType -> the names used here ("float32", "int32", ...); trt: tensorrt or tensorrt_rtx."""
    return {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16", trt.int32: "int32",
            trt.int64: "int64", trt.int8: "int8", trt.uint8: "uint8", trt.bool: "bool"}


@dataclass(frozen=True)
class Input:
    name: str
    dtype: str                      # ACTIVATION, or the dtype the parser delivers ("int32", "float32", "int64")
    onnx_dtype: str | None = None   # the ONNX graph's dtype where the parser converts it (W: "uint8")


@dataclass(frozen=True)
class PluginOp:
    """One plugin. Shapes are per input name; launch() works on ints (at enqueue) and on TensorRT's
    symbolic dims alike (given a matching cdiv)."""
    name: str
    inputs: tuple[Input, ...]
    attrs: tuple[str, ...]                                  # int attributes, as on the ONNX node
    output_like: str                                        # the output has this input's shape and dtype ...
    output_dims: dict[int, tuple[str, int]]                 # ... but these axes from other inputs' axes
    kernel: str                                             # a function of depthscale.kernels.aot
    kernel_args: Callable[[dict, dict], dict]               # (static dims by input, attrs) -> its arguments
    launch: Callable[[dict, dict, dict, Callable], tuple[tuple, tuple]]   # (dims, attrs, blocks, cdiv) -> (grid, int32 scalars)

    def input_dtypes(self, activation: str) -> list[str]:
        return [activation if i.dtype == ACTIVATION else i.dtype for i in self.inputs]


def _rows(dims: list):
    """Product of all axes but the last (the rows a linear layer sees); ints or symbolic dims."""
    out = dims[0]
    for d in dims[1:-1]:
        out = out * d
    return out


def _linear_launch(dims, attrs, blocks, cdiv):
    """bitlinear_fused_kernel: grid (cdiv(M, BM), cdiv(N, BN)); scalars M, N, K, K4."""
    rows, (n, k4) = _rows(dims["X"]), dims["W"][:2]
    return (cdiv(rows, blocks["BM"]), cdiv(n, blocks["BN"])), (rows, n, attrs["in_features"], k4)


def _attention_launch(dims, attrs, blocks, cdiv):
    """window_attention_kernel: grid (B·H, cdiv(n, BM)); scalars H, Hkv, n, window."""
    b, h, n = dims["Q"][:3]
    return (b * h, cdiv(n, blocks["BM"])), (h, dims["K"][1], n, attrs["window"])


def _cached_attention_launch(dims, attrs, blocks, cdiv):
    """cached_attention_kernel: grid (B·H, cdiv(c, BM)); scalars H, Hkv, c, S, window."""
    b, h, c = dims["Q"][:3]
    return (b * h, cdiv(c, blocks["BM"])), (h, dims["K"][1], c, dims["K"][2], attrs["window"])


def _exact_linear_launch(dims, attrs, blocks, cdiv):
    """exact_linear_kernel: grid (cdiv(M, BM), cdiv(N, BN)); scalars M, N, K."""
    rows, n = _rows(dims["X"]), dims["W"][0]
    return (cdiv(rows, blocks["BM"]), cdiv(n, blocks["BN"])), (rows, n, dims["X"][-1])


def _linear(name: str, gated: bool) -> PluginOp:
    return PluginOp(
        name=name,
        inputs=(Input("X", ACTIVATION), Input("W", "int32", onnx_dtype="uint8"), Input("G", "float32")),
        attrs=("in_features",), output_like="X", output_dims={-1: ("W", 0)},
        kernel="bitlinear", kernel_args=lambda dims, attrs: {"gated": gated}, launch=_linear_launch)


PLUGINS: dict[str, PluginOp] = {op.name: op for op in (
    _linear("BitLinear", gated=False),
    _linear("GatedBitLinear", gated=True),
    PluginOp(name="WindowAttention",
             inputs=(Input("Q", ACTIVATION), Input("K", ACTIVATION), Input("V", ACTIVATION)),
             attrs=("window",), output_like="Q", output_dims={},
             kernel="window_attention", kernel_args=lambda dims, attrs: {"head_dim": dims["Q"][3]},
             launch=_attention_launch),
    PluginOp(name="CachedAttention",
             inputs=(Input("Q", ACTIVATION), Input("K", ACTIVATION), Input("V", ACTIVATION), Input("QStart", "int64"),
                     Input("KStart", "int64")),
             attrs=("window",), output_like="Q", output_dims={},
             kernel="cached_attention", kernel_args=lambda dims, attrs: {"head_dim": dims["Q"][3]},
             launch=_cached_attention_launch),
    PluginOp(name="ExactLinear", inputs=(Input("X", ACTIVATION), Input("W", ACTIVATION)),
             attrs=(), output_like="X", output_dims={-1: ("W", 0)},
             kernel="exact_linear", kernel_args=lambda dims, attrs: {}, launch=_exact_linear_launch),
)}


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
