"""What both TensorRT flavors share: parsing an ONNX graph into a strongly typed network with our
plugins taking the custom nodes, the optimisation profile, what the parser made of the graph (layer
types, dtypes, plugin inputs: the facts the readiness check is cross-checked against), and the built
engine's layer inventory. `trt` is the flavor's module (tensorrt or tensorrt_rtx): their APIs agree here.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx

from depthscale_runtime.plugin_table import trt_dtype_names

from ..graph.ops import DOMAIN
from .readiness import graph_nodes, onnx_dtypes


@dataclass(frozen=True)
class Profile:
    """(batch, seq) at the minimum, optimum and maximum of the engine's optimisation profile. A graph's
    dynamic dims follow from them by name: batch; seq (real tokens); new (tokens per decode step: 1 at
    the minimum and optimum, seq at the maximum); capacity (the global KV's positions: seq · (1 + R))."""
    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def bounds(self, dim: str, positions_per_token: int = 1) -> tuple[int, int, int]:
        """(min, opt, max) of a named dynamic dim."""
        points = (self.min, self.opt, self.max)
        if dim == "batch":
            return tuple(p[0] for p in points)
        if dim == "seq":
            return tuple(p[1] for p in points)
        if dim == "new":
            return 1, 1, self.max[1]
        if dim == "capacity":
            return tuple(p[1] * positions_per_token for p in points)
        raise ValueError(f"no profile for a dynamic dim named {dim!r}")

    def as_dict(self) -> dict:
        """{"min": [batch, seq], "opt": ..., "max": ...}, as the manifest stores it."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @staticmethod
    def default(max_seq_len: int) -> "Profile":
        return Profile(min=(1, 1), opt=(1, min(512, max_seq_len)), max=(8, max_seq_len))

    @staticmethod
    def parse(text: str) -> "Profile":
        """"1x1:1x512:8x4096" (min:opt:max, each BATCHxSEQ)."""
        try:
            lo, opt, hi = (tuple(int(v) for v in part.lower().split("x")) for part in text.split(":"))
            profile = Profile(min=lo, opt=opt, max=hi)
        except ValueError:
            raise ValueError(f"a TensorRT profile looks like 1x1:1x512:8x4096 (min:opt:max), got {text!r}") from None
        points = (profile.min, profile.opt, profile.max)
        if not (all(len(p) == 2 for p in points)
                and all(1 <= lo <= opt <= hi for lo, opt, hi in zip(*points))):
            raise ValueError(f"TensorRT profile {text!r}: need 1 <= min <= opt <= max in batch and in seq")
        return profile


def make_logger(trt):
    """A TensorRT logger that keeps the errors and the builder's final layer report ("Layers: ..."), and
    prints warnings and errors as trt.Logger does."""

    class Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors, self.layer_report = [], None

        def log(self, severity, msg):
            if msg.startswith("Layers:"):
                self.layer_report = msg
            elif severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)

    return Log()


class ParseError(RuntimeError):
    """The ONNX parser refused the graph; the message lists its errors."""


def parse(trt, onnx_path: Path, logger):
    """(builder, network, parser) for onnx_path, strongly typed (the plugins must be registered first).
    The parser runs with its default flags, so a custom node goes to a plugin only if it carries the
    plugin attributes, as the readiness check requires. Raises ParseError with the parser's errors."""
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip() for i in range(parser.num_errors))
        raise ParseError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    return builder, network, parser


def add_profile(builder, config, network, profile: Profile, positions_per_token: int = 1) -> None:
    """One optimisation profile over every input's dynamic dims, by their names (Profile.bounds)."""
    trt_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        points = [list(shape), list(shape), list(shape)]
        for axis, size in enumerate(shape):
            if size == -1:
                for point, value in zip(points, profile.bounds(tensor.get_dimension_name(axis), positions_per_token)):
                    point[axis] = value
        trt_profile.set_shape(tensor.name, *points)
    config.add_optimization_profile(trt_profile)


def target_config(trt, builder, network, targets: list[str], profile: Profile, positions_per_token: int = 1):
    """A TensorRT-RTX builder config for an ahead-of-time (CPU) build for `targets` ("sm86", ...)."""
    config = builder.create_builder_config()
    config.num_compute_capabilities = len(targets)
    for i, target in enumerate(targets):
        config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), i)
    add_profile(builder, config, network, profile, positions_per_token)
    return config


def network_facts(trt, network) -> dict:
    """What the parser built: {"layers": {layer name: type name}, "dtypes": {tensor name: dtype name},
    "plugin_inputs": {layer name: [dtype names]}, "count_trip_limits": n}."""
    name_of = {v: trt_dtype_names(trt).get(v, k.lower()) for k, v in trt.DataType.__members__.items()}
    layers, dtypes, plugin_inputs, count_limits = {}, {}, {}, 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        layers[layer.name] = layer.type.name
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        for t in [*inputs, *(layer.get_output(j) for j in range(layer.num_outputs))]:
            if t is not None:
                dtypes[t.name] = name_of[t.dtype]
        if layer.type == trt.LayerType.PLUGIN_V3:
            plugin_inputs[layer.name] = [name_of[t.dtype] if t is not None else None for t in inputs]
        if layer.type == trt.LayerType.TRIP_LIMIT:
            layer.__class__ = trt.ITripLimitLayer
            count_limits += layer.kind == trt.TripLimit.COUNT
    return {"layers": layers, "dtypes": dtypes, "plugin_inputs": plugin_inputs, "count_trip_limits": count_limits}


def parser_verdict(trt, onnx_path: Path, profile: Profile, targets: list[str] | None = None) -> dict:
    """What the real parser (and, given targets, the builder) makes of a graph: {"parsed", "errors", and
    when parsed network_facts' keys, "plugin_input_conversions", and with targets "built"}. The
    readiness check's rules are cross-checked against this."""
    logger = make_logger(trt)
    try:
        builder, network, _ = parse(trt, onnx_path, logger)
    except ParseError as e:
        return {"parsed": False, "errors": [str(e)]}
    facts = network_facts(trt, network)
    model = onnx.load(str(onnx_path), load_external_data=False)
    verdict = {"parsed": True, **facts, "plugin_input_conversions": plugin_input_conversions(model, facts)}
    if targets:
        config = target_config(trt, builder, network, targets, profile)
        verdict["built"] = builder.build_serialized_network(network, config) is not None
    return verdict | {"errors": logger.errors}


def plugin_input_conversions(model: onnx.ModelProto, facts: dict) -> list[str]:
    """The dtype conversions the parser made at plugin inputs (network_facts against the graph), e.g.
    "BitLinear input 1: uint8 -> int32 (15 nodes)"."""
    dtypes, seen = onnx_dtypes(model), Counter()
    for node in graph_nodes(model.graph):
        for slot, (name, delivered) in enumerate(zip(node.input, facts["plugin_inputs"].get(node.name, []))):
            if dtypes.get(name) and delivered and dtypes[name] != delivered:
                seen[f"{node.op_type} input {slot}: {dtypes[name]} -> {delivered}"] += 1
    return [f"{k} ({n} node{'s' * (n > 1)})" for k, n in sorted(seen.items())]


_LAYER = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>\w+),.*?Metadata: (?P<meta>.*)$")
_ONNX_NODE = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_LOOP = re.compile(r"\(Unnamed Loop\* (\d+)\)")


def engine_inventory(layer_report: str | None, model: onnx.ModelProto) -> dict:
    """The built engine's layers (the builder's final layer report, the engine inspector's content)
    against the graph's custom nodes: every custom node must be a plugin layer ("custom_layer") and
    the recursion a loop."""
    custom = {n.name: n.op_type for n in graph_nodes(model.graph) if n.domain == DOMAIN}
    types, plugin_nodes, loops = Counter(), set(), set()
    for line in (layer_report or "").splitlines():
        m = _LAYER.match(line.strip())
        if not m:
            continue
        types[m["type"]] += 1
        loops.update(_LOOP.findall(m["name"]))
        if m["type"] == "custom_layer":
            plugin_nodes.update(_ONNX_NODE.findall(m["meta"]))
    return {"layers": sum(types.values()), "plugin_layers": types["custom_layer"], "loops": len(loops),
            "plugins": dict(Counter(custom[n] for n in plugin_nodes if n in custom)),
            "custom_nodes": len(custom), "custom_nodes_not_plugin_layers": sorted(set(custom) - plugin_nodes),
            "layer_types": dict(types)}
