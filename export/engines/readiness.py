"""Static TensorRT-readiness check of an exported graph, true to the real ONNX parser. Runs on CPU; needs
no TensorRT.

It reads the graph as TensorRT's parser does: the main graph and the Loop body, every custom node with
the plugin attributes and a plugin in depthscale_runtime.plugin_table taken by that plugin (its
function body unseen), any other custom node replaced by its function body. Each rule names what the
parser would refuse or alter; tests/test_trt_readiness.py plants a violation of each and confirms it
against a real TensorRT-RTX parse (and, for the loop's carried shapes, its builder).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

from depthscale_runtime.plugin_table import ACTIVATION, ACTIVATION_DTYPES, PARSER_CONVERTS, PLUGINS

from ..graph.ops import DOMAIN, PLUGIN_ATTRS

INT32_MAX = 2**31 - 1
# element types a TensorRT network carries (float64 is not one: the parser converts it, see below)
TRT_DTYPES = {"float32", "float16", "bfloat16", "int8", "int32", "int64", "bool", "uint8", "float8e4m3fn", "int4"}
ONNX_OP_NAMES = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}
# ONNX ops TensorRT's ONNX parser has no importer for: OnnxParser.supports_operator() is False for these
# and True for every other ONNX op (measured on TensorRT-RTX 1.7.1; tests re-measure it)
PARSER_UNSUPPORTED_OPS = frozenset({
    "AffineGrid", "Bernoulli", "BitCast", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "CumProd", "DFT", "DeformConv",
    "Det", "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool",
    "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
    "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss",
    "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit", "SwiGLU", "TfIdfVectorizer", "Unique"})

RULES = ("custom nodes carry the plugin attributes",
         "no custom op_type collides with an ONNX op name",
         "every custom node has a plugin",
         "every op the parser meets is one it imports",
         "every dtype is one TensorRT carries",
         "the parser lowers no value's precision",
         "plugin inputs arrive in the dtypes the plugins declare",
         "Loop-carried shapes do not change across iterations",
         "the Loop has no scan outputs",
         "a Loop's constant trip count fits in int32")


NONZERO_NOTE = ("NonZero (the active-set Loop): full TensorRT imports it as a NonZero layer; TensorRT-RTX 1.7's parser "
                "only through a NonZero plugin, which it does not ship, so the export builds TensorRT plans from the "
                "dense-loop form of the graph")


def dtype_name(elem_type: int) -> str:
    """numpy's name of an ONNX element type ("float32", "uint8", "float64", "bfloat16", ...)."""
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def graph_nodes(graph: onnx.GraphProto):
    """Every node of an ONNX graph, subgraphs (Loop and If bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from graph_nodes(attr.g)


def _subgraphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(attr.g)


def takes_plugin(node: onnx.NodeProto) -> bool:
    """Whether the parser hands this node to one of our plugins."""
    return (node.domain == DOMAIN and node.op_type in PLUGINS and
            all(any(a.name == k and a.s.decode() == v for a in node.attribute) for k, v in PLUGIN_ATTRS.items()))


def parsed_nodes(model: onnx.ModelProto):
    """The nodes the parser meets: those of the graph and its subgraphs, with every custom node that no
    plugin takes replaced by its function body (recursively)."""
    functions = {(f.domain, f.name): f for f in model.functions}

    def expand(nodes):
        for node in nodes:
            body = functions.get((node.domain, node.op_type))
            if node.domain and not takes_plugin(node) and body is not None:
                yield from expand(body.node)
            else:
                yield node
                for attr in node.attribute:
                    if attr.type == onnx.AttributeProto.GRAPH:
                        yield from expand(attr.g.node)
    yield from expand(model.graph.node)


def onnx_dtypes(model: onnx.ModelProto) -> dict[str, str]:
    """Element type name of every typed value and initializer of the graph and its subgraphs."""
    out = {}
    for g in _subgraphs(model.graph):
        for v in (*g.input, *g.output, *g.value_info):
            if v.type.HasField("tensor_type"):
                out[v.name] = dtype_name(v.type.tensor_type.elem_type)
        out.update({i.name: dtype_name(i.data_type) for i in g.initializer})
    return out


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _plugin_dtypes(node: onnx.NodeProto, dtypes: dict) -> tuple[list[str], list[str]]:
    """(problems, conversions) of one plugin node's inputs against plugin_table."""
    op, problems, conversions = PLUGINS[node.op_type], [], []
    delivered = [PARSER_CONVERTS.get(dtypes.get(name), dtypes.get(name)) for name in node.input]
    activation = next((d for d, i in zip(delivered, op.inputs) if i.dtype == ACTIVATION), None)
    for name, spec, before, after in zip(node.input, op.inputs, (dtypes.get(n) for n in node.input), delivered):
        want = activation if spec.dtype == ACTIVATION else spec.dtype
        if after is None:
            continue
        if spec.dtype == ACTIVATION and after not in ACTIVATION_DTYPES or after != want:
            problems.append(f"{node.op_type} {node.name!r} input {spec.name} ({name}) arrives as {after}, the "
                            f"plugin declares {want if spec.dtype != ACTIVATION else '/'.join(ACTIVATION_DTYPES)}")
        elif before != after:
            conversions.append(f"{node.op_type}.{spec.name}: {before} -> {after} (declared {want})")
    return problems, conversions


def check_tensorrt_readiness(model: onnx.ModelProto) -> dict:
    """Returns {"passed": bool, "checks": [{"check", "passed", "problems": [...], "notes": [...]}, ...]}
    with one check per RULES entry, in that order."""
    nodes = list(graph_nodes(model.graph))
    seen = list(parsed_nodes(model))
    dtypes = onnx_dtypes(model)
    custom = [n for n in nodes if n.domain == DOMAIN]
    results = {}

    def record(rule, problems, notes=()):
        assert rule in RULES
        results[rule] = {"check": rule, "passed": not problems, "problems": list(problems), "notes": sorted(set(notes))}

    record(RULES[0], [f"{n.op_type} node {n.name!r} lacks {k}={v!r}: the parser imports its function body"
                      for n in custom for k, v in PLUGIN_ATTRS.items()
                      if not any(a.name == k and a.s.decode() == v for a in n.attribute)])
    record(RULES[1], [f"{n.op_type} (domain {n.domain!r}) is also an ONNX op: the parser's built-in importer takes it"
                      for n in custom if n.op_type in ONNX_OP_NAMES])
    record(RULES[2], [f"{n.op_type} node {n.name!r}: no plugin {DOMAIN}::{n.op_type} (plugins: {', '.join(PLUGINS)})"
                      for n in custom if n.op_type not in PLUGINS])
    record(RULES[3], sorted({f"{n.op_type} ({n.name or 'unnamed'}): the parser has no importer for it"
                             for n in seen if n.domain in ("", "ai.onnx") and n.op_type in PARSER_UNSUPPORTED_OPS}),
           [NONZERO_NOTE for n in seen if n.op_type == "NonZero"])
    casts = {n.output[0]: dtype_name(a.i) for n in seen if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    typed = {**dtypes, **casts}
    record(RULES[4], sorted({f"{name}: {t}" for name, t in typed.items() if t not in TRT_DTYPES | set(PARSER_CONVERTS)}))
    record(RULES[5], sorted({f"{name}: float64 becomes {PARSER_CONVERTS[t]}" for name, t in typed.items()
                             if t == "float64"}))
    problems, notes = [], []
    for node in nodes:
        if takes_plugin(node):
            p, c = _plugin_dtypes(node, dtypes)
            problems += p
            notes += c
    record(RULES[6], problems, notes)
    carried, scans, trips = [], [], []
    initializers = {i.name: i for g in _subgraphs(model.graph) for i in g.initializer}
    for loop in (n for n in nodes if n.op_type == "Loop" and n.domain in ("", "ai.onnx")):
        body = next(a.g for a in loop.attribute if a.name == "body")
        k = len(loop.input) - 2                                 # carried values
        for b_in, b_out in zip(body.input[2:], body.output[1:1 + k]):
            if _dims(b_in) != _dims(b_out) or b_in.type.tensor_type.elem_type != b_out.type.tensor_type.elem_type:
                carried.append(f"{loop.name or 'Loop'}: carried {b_in.name} {_dims(b_in)} comes back as "
                               f"{b_out.name} {_dims(b_out)}")
        if len(body.output) > 1 + k:
            scans.append(f"{loop.name or 'Loop'} has {len(body.output) - 1 - k} scan output(s)")
        trip = initializers.get(loop.input[0]) if loop.input and loop.input[0] else None
        if trip is not None and int(numpy_helper.to_array(trip).reshape(-1)[0]) > INT32_MAX:
            trips.append(f"{loop.name or 'Loop'}: trip count {int(numpy_helper.to_array(trip))} exceeds int32: "
                         f"the parser drops the limit")
    record(RULES[7], carried)
    record(RULES[8], scans)
    record(RULES[9], trips)
    checks = [results[r] for r in RULES]
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
