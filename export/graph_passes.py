"""Passes over the exported onnx-ir model, each doing one thing."""

from __future__ import annotations

import onnx_ir as ir

from .onnx_ops import DOMAIN, DOMAIN_VERSION, function_protos


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
    """Add the recursion's final hidden state s_T (the Loop's first float carried output) as a graph
    output. For the per-iteration parity check: run with max_iters = t to read s_t."""
    (loop,) = [n for n in model.graph if n.op_type == "Loop"]
    carried = [v for v in loop.outputs if v.dtype == ir.DataType.FLOAT and v.shape is not None
               and len(v.shape) == 3]
    state = carried[0]
    state.name = name
    model.graph.outputs.append(state)
