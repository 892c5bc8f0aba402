"""Passes over the exported onnx-ir model, each doing one thing."""

from __future__ import annotations

import itertools

import onnx_ir as ir

from .ops import DOMAIN, DOMAIN_VERSION, function_protos


def _all_nodes(model: ir.Model):
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for fn in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(fn)


def attach_functions(model: ir.Model) -> None:
    """Give every custom-domain op used in the model its local function body (and the bodies
    those bodies call)."""
    bodies = {p.name: p for p in function_protos(model.opset_imports[""])}
    wanted = {n.op_type for n in _all_nodes(model) if n.domain == DOMAIN}
    while wanted:
        fn = ir.serde.deserialize_function(bodies[wanted.pop()])
        model.functions[fn.identifier()] = fn
        wanted |= ({n.op_type for n in ir.traversal.RecursiveGraphIterator(fn) if n.domain == DOMAIN}
                   - {f.name for f in model.functions.values()})
    model.opset_imports[DOMAIN] = DOMAIN_VERSION


def strip_metadata(model: ir.Model) -> None:
    """Drop doc strings and metadata properties (exporter stack traces, module paths) everywhere."""
    model.doc_string = None
    model.metadata_props.clear()
    graphs = [model.graph, *model.functions.values()]
    for node in _all_nodes(model):
        node.doc_string = None
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()
            value.doc_string = None
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                graphs.append(attr.value)
    for g in graphs:
        g.doc_string = None
        g.metadata_props.clear()
        for value in (*g.inputs, *g.outputs):
            value.metadata_props.clear()
            value.doc_string = None
    for init in model.graph.initializers.values():
        init.metadata_props.clear()
        init.doc_string = None


def rename_dims(model: ir.Model, names: dict[str, str]) -> None:
    """Rename symbolic dims everywhere (torch's s70 -> "seq"), subgraphs included, so that equal dims
    carry equal names (which the TensorRT-readiness check compares)."""
    graphs = [model.graph] + [attr.value for node in ir.traversal.RecursiveGraphIterator(model.graph)
                              for attr in node.attributes.values() if attr.type == ir.AttributeType.GRAPH]
    values = {id(v): v for g in graphs for v in (*g.inputs, *g.outputs)}
    values.update({id(v): v for node in ir.traversal.RecursiveGraphIterator(model.graph) for v in node.outputs})
    for value in values.values():
        if value.shape is not None and any(isinstance(d, ir.SymbolicDim) and d.value in names for d in value.shape):
            value.shape = ir.Shape([names.get(d.value, d.value) if isinstance(d, ir.SymbolicDim) else d
                                    for d in value.shape])
    # a Loop body's carried inputs are the outer initial values at iteration 0: give them those shapes
    # (torch names the body's dims with fresh symbols)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Loop":
            body = node.attributes["body"].value
            for outer, inner in zip(node.inputs[2:], body.inputs[2:]):
                if outer.shape is not None and inner.shape is not None and len(outer.shape) == len(inner.shape):
                    inner.shape = outer.shape


def expose_loop_state(model: ir.Model, name: str = "state") -> None:
    """Add the recursion's final hidden state s_T (the last Loop's first float carried output: the
    recursion is one Loop, or a dense then an active-set one), as float32, as a graph output. For the
    per-iteration parity check: run with max_iters = t to read s_t."""
    loop = [n for n in model.graph if n.op_type == "Loop"][-1]
    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    carried = [v for v in loop.outputs if v.dtype in floats and v.shape is not None
               and len(v.shape) == 3]
    cast = ir.node("Cast", [carried[0]], attributes={"to": ir.DataType.FLOAT}, name=f"{name}_to_float32")
    cast.outputs[0].name = name
    cast.outputs[0].dtype = ir.DataType.FLOAT
    cast.outputs[0].shape = carried[0].shape
    model.graph.append(cast)
    model.graph.outputs.append(cast.outputs[0])


# ops that only pass half-precision values along (or read their shape), which ONNX Runtime runs for
# any dtype
_ANY_DTYPE_OPS = {"Cast", "CastLike", "Identity", "Shape", "Size", "Loop", "If", "Constant", "ConstantOfShape"}
HALF_DTYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def emulate_half(model: ir.Model) -> int:
    """Rewrite every op that has float16 or bfloat16 operands or results (outside our custom nodes) to
    compute in float32 between Casts: half -> float32 on each such input, back to its half dtype on
    each output. That is what eager PyTorch does on CPU for a half-precision op (compute in float32,
    round the result), while ONNX Runtime's CPU provider has no bfloat16 kernels at all and runs chains
    of float16 ops in float32 without rounding in between. The parity gate checks the graph through
    this rewrite; the artifact keeps the real half-precision graph. Returns the number of ops rewritten."""
    f32 = ir.DataType.FLOAT
    rewritten = 0
    fresh = (f"half_emulation_{i}" for i in itertools.count())      # names unique across subgraphs
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type in _ANY_DTYPE_OPS or node.domain == DOMAIN:
            continue
        if not any(v is not None and v.dtype in HALF_DTYPES for v in (*node.inputs, *node.outputs)):
            continue
        graph = node.graph
        for i, value in enumerate(node.inputs):
            if value is not None and value.dtype in HALF_DTYPES:
                up = ir.node("Cast", [value], attributes={"to": f32})
                up.outputs[0].dtype, up.outputs[0].name = f32, next(fresh)
                graph.insert_before(node, up)
                node.replace_input_with(i, up.outputs[0])
        for value in node.outputs:
            if value.dtype not in HALF_DTYPES:
                continue
            down = ir.node("Cast", [value], attributes={"to": value.dtype})
            down.outputs[0].dtype, down.outputs[0].shape, down.outputs[0].name = value.dtype, value.shape, next(fresh)
            graph.insert_after(node, down)
            for user, index in list(value.uses()):
                if user is not down:
                    user.replace_input_with(index, down.outputs[0])
            for index, out in enumerate(graph.outputs):
                if out is value:
                    graph.outputs[index] = down.outputs[0]
            value.dtype = f32
        rewritten += 1
    return rewritten
