"""Full TensorRT's plugins for the custom ops: quickly deployable plugins (tensorrt.plugin, TensorRT
>= 10.9) generated from depthscale_runtime.plugin_table, one "depthscale::<op>" per PluginOp, each with
its shape/type description, an autotune list over the activation dtypes, and an AOT implementation:
PTX compiled from the Triton kernels (depthscale.kernels.aot) that TensorRT embeds in the plan, so a
built engine runs without Python plugin code. (TensorRT-RTX's adapter over the same table is
depthscale_runtime.rtx_plugins.)

NOT VERIFIED HERE: TensorRT's builder cannot be installed in this workplace and this task has no GPU;
this module is written against the documented tensorrt.plugin API (register, autotune, aot_impl,
KernelLaunchParams, SymIntExprs). How tensorrt.plugin passes the two scratch pointers Triton >= 3.3
appends to a kernel's parameters is not known here either.

Importing this module registers the plugins; it needs tensorrt (>= 10.9), triton and a CUDA device
(the PTX is compiled for the local GPU's architecture).
"""

from __future__ import annotations

import inspect

import tensorrt as trt
import tensorrt.plugin as trtp
import torch

from depthscale.kernels import aot
from depthscale_runtime.plugin_table import ACTIVATION, ACTIVATION_DTYPES, NAMESPACE, PLUGINS, TRITON_DTYPES, PluginOp

_COMBINATION_NAMES = {"float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "int32": "INT32", "int64": "INT64"}
_ACTIVATIONS = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16"}
_P = inspect.Parameter


def _arch() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _signed(fn, params: list[inspect.Parameter], returns):
    """fn(*args) with the named, annotated signature tensorrt.plugin reads (inputs, attributes, ...)."""
    fn.__signature__ = inspect.Signature(params, return_annotation=returns)
    fn.__annotations__ = {p.name: p.annotation for p in params if p.annotation is not _P.empty} | {"return": returns}
    return fn


def _define(op: PluginOp) -> None:
    key = f"{NAMESPACE}::{op.name}"
    params = ([_P(i.name, _P.POSITIONAL_OR_KEYWORD, annotation=trtp.TensorDesc) for i in op.inputs]
              + [_P(a, _P.POSITIONAL_OR_KEYWORD, annotation=int) for a in op.attrs])
    first = next(i.name for i in op.inputs if i.dtype == ACTIVATION)

    def bind(args, kwargs, extra=()):
        return inspect.Signature(params + [_P(e, _P.POSITIONAL_OR_KEYWORD) for e in extra]).bind(*args, **kwargs).arguments

    def describe(*args, **kwargs):
        b = bind(args, kwargs)
        out = b[op.output_like].like()
        for axis, (name, source_axis) in op.output_dims.items():
            out.shape_expr[axis] = b[name].shape_expr[source_axis]
        return out

    def autotune(*args, **kwargs):
        return [trtp.AutoTuneCombination(", ".join(_COMBINATION_NAMES[d] for d in [*op.input_dtypes(a), a]))
                for a in ACTIVATION_DTYPES]

    def aot_impl(*args, **kwargs):
        b = bind(args, kwargs, extra=("outputs", "tactic"))
        activation = _ACTIVATIONS[b[first].dtype]
        dims = {i.name: list(b[i.name].shape_expr) for i in op.inputs}
        static = {n: [d.constant_value if d.is_constant else -1 for d in ds] for n, ds in dims.items()}
        attrs = {a: b[a] for a in op.attrs}
        kernel = getattr(aot, op.kernel)(TRITON_DTYPES[activation], **op.kernel_args(static, attrs), arch=_arch())
        grid, scalars = op.launch(dims, attrs, kernel.blocks, trtp.cdiv)
        launch = trtp.KernelLaunchParams()
        launch.grid_x, launch.grid_y = (*grid, 1)[:2]
        launch.block_x = kernel.num_warps * 32
        launch.shared_mem = kernel.shared_mem
        symbols = trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])
        return kernel.name.encode(), kernel.ptx.encode(), launch, symbols

    trtp.register(key)(_signed(describe, params, trtp.TensorDesc))
    trtp.autotune(key)(_signed(autotune, params + [_P("outputs", _P.POSITIONAL_OR_KEYWORD)],
                               list[trtp.AutoTuneCombination]))
    trtp.aot_impl(key)(_signed(aot_impl, params + [_P("outputs", _P.POSITIONAL_OR_KEYWORD),
                                                   _P("tactic", _P.POSITIONAL_OR_KEYWORD, annotation=int)], tuple))


for _op in PLUGINS.values():
    _define(_op)
