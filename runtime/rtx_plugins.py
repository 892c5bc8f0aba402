"""TensorRT-RTX plugins for the custom ops: one IPluginV3 class that serves every PluginOp of
plugin_table.PLUGINS (TensorRT-RTX 1.7 ships no tensorrt_rtx.plugin module for quickly deployable
plugins, so these are Python IPluginV3 creators in the plugin registry).

At build (export, CPU): the ONNX parser creates one plugin per custom node from the node's int
attributes; configure_plugin learns the dtypes and static dims, and the plugin compiles its Triton
kernel to PTX for the engine's target with the compiler register() was given (the export passes
depthscale.kernels.aot); attributes, PTX and launch facts are serialized into the plan.

At run time (depthscale_runtime, GPU): a plan with these plugins needs the creators registered before
it is deserialized, which the runtime's "tensorrt" backend does (register() without a compiler); each
plugin loads its PTX from the plan through the CUDA driver and launches it at enqueue: no Python kernel
code, no torch, no triton.

NOT VERIFIED HERE (no GPU): enqueue. Verified on CPU: registration, parsing, shapes and dtypes,
format negotiation, PTX compilation and serialization into CPU-built plans (tests/test_tensorrt_rtx.py).
"""

from __future__ import annotations

import ctypes
import functools
import json
from typing import Callable

import numpy as np

from . import cuda_driver
from .plugin_table import (ACTIVATION, ACTIVATION_DTYPES, NAMESPACE, PLUGINS, VERSION, PluginOp, ceil_div,
                           trt_dtype_names)
from .tensorrt_rtx import import_tensorrt_rtx

trt = import_tensorrt_rtx()

DTYPE_NAMES = trt_dtype_names(trt)
# compile(op, activation dtype, static dims by input name (-1: dynamic), attrs) -> an AotKernel-like object
KernelCompiler = Callable[[PluginOp, str, dict, dict], object]

_creators: dict[str, "_Creator"] = {}


def register(compile_kernel: KernelCompiler | None = None) -> list[str]:
    """Register every plugin's creator (once per process); with compile_kernel, plugins created for a
    build compile their kernels with it. Returns the registered names ("depthscale::BitLinear", ...)."""
    registry = trt.get_plugin_registry()
    for op in PLUGINS.values():
        if op.name not in _creators:
            creator = _Creator(op)
            if not registry.register_creator(creator, NAMESPACE):
                raise RuntimeError(f"TensorRT-RTX refused to register the plugin {NAMESPACE}::{op.name}")
            _creators[op.name] = creator
        _creators[op.name].compile_kernel = compile_kernel
    return [f"{NAMESPACE}::{name}" for name in _creators]


def _activation_index(op: PluginOp) -> int:
    return next(i for i, t in enumerate(op.inputs) if t.dtype == ACTIVATION)


@functools.lru_cache(maxsize=None)
def _loaded_kernel(ptx: str, name: str, shared_mem: int):
    return cuda_driver.load_kernel(ptx, name, shared_mem)


class _Plugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
    def __init__(self, op: PluginOp, attrs: dict, kernel: dict | None, ptx: str | None,
                 compile_kernel: KernelCompiler | None):
        trt.IPluginV3.__init__(self)
        trt.IPluginV3OneCore.__init__(self)
        trt.IPluginV3OneBuild.__init__(self)
        trt.IPluginV3OneRuntime.__init__(self)
        self.plugin_name, self.plugin_namespace, self.plugin_version = op.name, NAMESPACE, VERSION
        self.num_outputs = 1
        self.op, self.attrs, self.kernel, self.ptx, self.compile_kernel = op, attrs, kernel, ptx, compile_kernel
        self.names = [t.name for t in op.inputs]

    def get_capability_interface(self, capability):
        return self

    def clone(self):
        return _Plugin(self.op, self.attrs, self.kernel, self.ptx, self.compile_kernel)

    # ---- build ----
    def get_output_data_types(self, input_types):
        return [input_types[self.names.index(self.op.output_like)]]

    def get_output_shapes(self, inputs, shape_inputs, expr_builder):
        out = trt.DimsExprs(inputs[self.names.index(self.op.output_like)])
        for axis, (name, source_axis) in self.op.output_dims.items():
            out[axis % len(out)] = inputs[self.names.index(name)][source_axis]
        return [out]

    def supports_format_combination(self, pos, in_out, num_inputs):
        """Linear layout; the dtypes of plugin_table (the activation one of ACTIVATION_DTYPES, the output
        in its `output_like` input's dtype)."""
        desc = in_out[pos].desc
        got = DTYPE_NAMES.get(desc.type)
        if desc.format != trt.TensorFormat.LINEAR:
            return False
        first = _activation_index(self.op)
        if pos == first:
            return got in ACTIVATION_DTYPES
        if pos < num_inputs and self.op.inputs[pos].dtype != ACTIVATION:
            return got == self.op.inputs[pos].dtype
        like = in_out[self.names.index(self.op.output_like)].desc.type if pos >= num_inputs else in_out[first].desc.type
        return desc.type == like

    def configure_plugin(self, inputs, outputs):
        if self.compile_kernel is None or self.ptx is not None:
            return
        activation = DTYPE_NAMES[inputs[_activation_index(self.op)].desc.type]
        dims = {name: list(t.desc.dims) for name, t in zip(self.names, inputs)}
        k = self.compile_kernel(self.op, activation, dims, self.attrs)
        self.kernel = {"name": k.name, "num_warps": k.num_warps, "shared_mem": k.shared_mem, "blocks": k.blocks,
                       "scratch_pointers": k.scratch_pointers, "activation": activation}
        self.ptx = k.ptx

    def get_fields_to_serialize(self):
        fields = [trt.PluginField(a, np.array([v], dtype=np.int32), trt.PluginFieldType.INT32)
                  for a, v in self.attrs.items()]
        if self.ptx is not None:
            fields += [trt.PluginField(key, np.frombuffer(text.encode(), dtype=np.int8), trt.PluginFieldType.CHAR)
                       for key, text in (("kernel", json.dumps(self.kernel)), ("ptx", self.ptx))]
        self._fields = trt.PluginFieldCollection(fields)      # TensorRT reads them after we return
        return self._fields

    # ---- run (NOT VERIFIED HERE: no GPU) ----
    def on_shape_change(self, inputs, outputs):
        pass

    def set_tactic(self, tactic):
        pass

    def attach_to_context(self, context):
        return self.clone()

    def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
        if self.ptx is None:
            raise RuntimeError(f"{NAMESPACE}::{self.op.name}: the plan carries no kernel (built without one)")
        k = self.kernel
        function = _loaded_kernel(self.ptx, k["name"], k["shared_mem"])
        dims = {name: list(d.dims) for name, d in zip(self.names, input_desc)}
        grid, scalars = self.op.launch(dims, self.attrs, k["blocks"], ceil_div)
        args = ([ctypes.c_uint64(p) for p in inputs] + [ctypes.c_int32(int(s)) for s in scalars]
                + [ctypes.c_uint64(p) for p in outputs] + [ctypes.c_uint64(0)] * k["scratch_pointers"])
        cuda_driver.launch(function, grid, k["num_warps"] * 32, k["shared_mem"], stream, args)


class _Creator(trt.IPluginCreatorV3One):
    def __init__(self, op: PluginOp):
        trt.IPluginCreatorV3One.__init__(self)
        self.name, self.plugin_namespace, self.plugin_version = op.name, NAMESPACE, VERSION
        self.op, self.compile_kernel = op, None
        self.field_names = trt.PluginFieldCollection(
            [trt.PluginField(a, np.array([0], dtype=np.int32), trt.PluginFieldType.INT32) for a in op.attrs])

    def create_plugin(self, name, fields, phase):
        data = {f.name: np.asarray(f.data) for f in fields}
        missing = [a for a in self.op.attrs if a not in data]
        if missing:
            raise ValueError(f"{NAMESPACE}::{self.op.name} node {name!r} lacks the attribute(s) {missing}")
        attrs = {a: int(data[a].reshape(-1)[0]) for a in self.op.attrs}
        text = {key: data[key].astype(np.int8).tobytes().decode() for key in ("kernel", "ptx") if key in data}
        build = phase == trt.TensorRTPhase.BUILD
        return _Plugin(self.op, attrs, json.loads(text["kernel"]) if "kernel" in text else None, text.get("ptx"),
                       self.compile_kernel if build else None)
