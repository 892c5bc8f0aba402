"""Static TensorRT-readiness check of an exported graph (DESIGN §5). Runs on CPU; needs no TensorRT.

It reads the graph TensorRT would parse: the main graph and the Loop body, with every "depthscale"
node taken by a plugin (so the function bodies, which TensorRT never sees then, are not inspected).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from ..graph.ops import DOMAIN, PLUGIN_ATTRS

INT32_MAX = 2**31 - 1
# element types a TensorRT 10 network can carry (no float64, no complex, no strings)
TRT_DTYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8, TensorProto.INT32,
              TensorProto.INT64, TensorProto.BOOL, TensorProto.UINT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}
ONNX_OP_NAMES = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}


def graph_nodes(graph: onnx.GraphProto):
    """Every node of an ONNX graph, subgraphs (Loop and If bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_nodes(attr.g)


def _graph_values(graph: onnx.GraphProto):
    yield from (*graph.input, *graph.output, *graph.value_info)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_values(attr.g)


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def check_tensorrt_readiness(model: onnx.ModelProto, max_iters_cap: int) -> dict:
    """Returns {"passed": bool, "checks": [{"check", "passed", "problems": [...]}, ...]}."""
    nodes = list(graph_nodes(model.graph))
    checks = []

    def record(name, problems):
        checks.append({"check": name, "passed": not problems, "problems": problems})

    custom = [n for n in nodes if n.domain == DOMAIN]
    record("custom nodes carry the plugin attributes", [
        f"{n.op_type} node {n.name!r} lacks {k}={v!r}" for n in custom for k, v in PLUGIN_ATTRS.items()
        if not any(a.name == k and a.s.decode() == v for a in n.attribute)])
    record("no custom op_type collides with an ONNX op name", [
        f"{n.op_type} (domain {n.domain!r}) is also an ONNX op: TensorRT's built-in importer would take it"
        for n in custom if n.op_type in ONNX_OP_NAMES])
    loops = [n for n in nodes if n.op_type == "Loop" and n.domain in ("", "ai.onnx")]
    carried, scans = [], []
    for loop in loops:
        body = next(a.g for a in loop.attribute if a.name == "body")
        k = len(loop.input) - 2                                 # carried values
        for b_in, b_out in zip(body.input[2:], body.output[1:1 + k]):
            if _dims(b_in) != _dims(b_out) or b_in.type.tensor_type.elem_type != b_out.type.tensor_type.elem_type:
                carried.append(f"{loop.name or 'Loop'}: carried {b_in.name} {_dims(b_in)} comes back as "
                               f"{b_out.name} {_dims(b_out)}")
        if len(body.output) > 1 + k:
            scans.append(f"{loop.name or 'Loop'} has {len(body.output) - 1 - k} scan output(s)")
    record("Loop-carried shapes do not change across iterations", carried)
    record("the Loop has no scan outputs", scans)
    record("the trip count fits in int32", [] if 0 <= max_iters_cap <= INT32_MAX else
           [f"max_iters cap {max_iters_cap} exceeds int32 ({INT32_MAX})"])
    bad_types = sorted({f"{v.name}: {TensorProto.DataType.Name(v.type.tensor_type.elem_type)}"
                        for v in _graph_values(model.graph)
                        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type not in TRT_DTYPES}
                       | {f"{i.name}: {TensorProto.DataType.Name(i.data_type)}" for i in model.graph.initializer
                          if i.data_type not in TRT_DTYPES}
                       | {f"{n.op_type} {n.name!r} casts to {TensorProto.DataType.Name(a.i)}" for n in nodes
                          if n.op_type == "Cast" for a in n.attribute if a.name == "to" and a.i not in TRT_DTYPES})
    record("every dtype is one TensorRT supports", bad_types)
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
