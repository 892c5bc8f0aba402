"""What the loader must know of an ONNX model before ONNX Runtime sees it, read from the protobuf wire
format (the runtime needs neither the onnx package nor torch): the graph's inputs and outputs, its
metadata, and every external-data file it references, anywhere (initializers, sparse initializers,
tensors in attributes, subgraphs, functions). inline_external() rewrites a model with its external
initializers inlined, for ONNX Runtimes that take no external data from memory.

Only the fields named below are decoded; every other field is skipped by its wire type. Malformed
bytes raise ValueError; so does nesting deeper than MAX_DEPTH messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_DEPTH = 64

# field numbers (onnx.proto3)
MODEL_GRAPH, MODEL_METADATA, MODEL_FUNCTIONS = 7, 14, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_SPARSE_INITIALIZER = 1, 5, 11, 12, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
FUNCTION_NODE = 7
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 9, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR, TENSOR_TYPE_ELEM, TENSOR_TYPE_SHAPE, SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 1, 2, 1, 1, 2
EXTERNAL = 1


@dataclass
class ValueInfo:
    name: str
    elem_type: int                          # onnx.TensorProto.DataType number
    shape: list                             # int, or str for a named dim, or None for an unknown one


@dataclass
class ModelInfo:
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    external: list[dict[str, str]] = field(default_factory=list)   # each tensor's external_data entries


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or malformed varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def fields(buf: memoryview):
    """Yield (field number, wire type, value) for one message: an int for varints and fixed-width
    fields, a memoryview for length-delimited ones."""
    for number, wire, value, _ in _spans(buf):
        yield number, wire, value


def _spans(buf: memoryview):
    """fields(), each with the field's encoded bytes (key included) as a memoryview."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wire == 5:
            value, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > len(buf):
                raise ValueError("truncated length-delimited field")
            value, i = buf[i:i + length], i + length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value, buf[start:i]


def _text(value) -> str:
    return bytes(value).decode("utf-8", errors="strict")


def _entry(buf) -> tuple[str, str]:
    key = value = ""
    for number, wire, v in fields(buf):
        if wire == 2 and number == ENTRY_KEY:
            key = _text(v)
        elif wire == 2 and number == ENTRY_VALUE:
            value = _text(v)
    return key, value


def _tensor(buf, info: ModelInfo) -> None:
    entries, location = {}, 0
    for number, wire, value in fields(buf):
        if wire == 2 and number == TENSOR_EXTERNAL_DATA:
            k, v = _entry(value)
            entries[k] = v
        elif wire == 0 and number == TENSOR_DATA_LOCATION:
            location = value
    if location == EXTERNAL or entries:
        info.external.append(entries)


def _sparse(buf, info: ModelInfo) -> None:
    for number, wire, value in fields(buf):
        if wire == 2 and number in (SPARSE_VALUES, SPARSE_INDICES):
            _tensor(value, info)


def _node(buf, info: ModelInfo, depth: int) -> None:
    for number, wire, value in fields(buf):
        if wire != 2 or number != NODE_ATTRIBUTE:
            continue
        for a_number, a_wire, a_value in fields(value):
            if a_wire != 2:
                continue
            if a_number in (ATTR_T, ATTR_TENSORS):
                _tensor(a_value, info)
            elif a_number in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
                _sparse(a_value, info)
            elif a_number in (ATTR_G, ATTR_GRAPHS):
                _graph(a_value, info, depth + 1, top=False)


def _value_info(buf) -> ValueInfo:
    name, elem, shape = "", 0, []
    for number, wire, value in fields(buf):
        if wire == 2 and number == VALUE_NAME:
            name = _text(value)
        elif wire == 2 and number == VALUE_TYPE:
            for t_number, t_wire, t_value in fields(value):
                if t_wire == 2 and t_number == TYPE_TENSOR:
                    for n, w, v in fields(t_value):
                        if w == 0 and n == TENSOR_TYPE_ELEM:
                            elem = v
                        elif w == 2 and n == TENSOR_TYPE_SHAPE:
                            for dn, dw, dv in fields(v):
                                if dw == 2 and dn == SHAPE_DIM:
                                    dim = None
                                    for xn, xw, xv in fields(dv):
                                        dim = xv if (xw == 0 and xn == DIM_VALUE) else (
                                            _text(xv) if (xw == 2 and xn == DIM_PARAM) else dim)
                                    shape.append(dim)
    return ValueInfo(name, elem, shape)


def _graph(buf, info: ModelInfo, depth: int, top: bool) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"graphs nested deeper than {MAX_DEPTH}")
    for number, wire, value in fields(buf):
        if wire != 2:
            continue
        if number == GRAPH_NODE:
            _node(value, info, depth)
        elif number == GRAPH_INITIALIZER:
            _tensor(value, info)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse(value, info)
        elif top and number == GRAPH_INPUT:
            info.inputs.append(_value_info(value))
        elif top and number == GRAPH_OUTPUT:
            info.outputs.append(_value_info(value))


def read_model(data: bytes) -> ModelInfo:
    """The facts above, from a serialised ModelProto. Raises ValueError on malformed bytes."""
    info = ModelInfo()
    graphs = 0
    for number, wire, value in fields(memoryview(data)):
        if wire != 2:
            continue
        if number == MODEL_GRAPH:
            _graph(value, info, 0, top=True)
            graphs += 1
        elif number == MODEL_METADATA:
            k, v = _entry(value)
            info.metadata[k] = v
        elif number == MODEL_FUNCTIONS:
            for f_number, f_wire, f_value in fields(value):
                if f_wire == 2 and f_number == FUNCTION_NODE:
                    _node(f_value, info, 1)
    if graphs != 1:
        raise ValueError("not an ONNX model (no graph)")
    return info


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _rewrite(buf: memoryview, number: int, rewrite) -> bytes:
    """The message buf with each length-delimited field `number` replaced by rewrite(its value); every
    other field as it was."""
    return b"".join(_length_delimited(n, rewrite(v)) if (w == 2 and n == number) else bytes(raw)
                    for n, w, v, raw in _spans(buf))


def inline_external(data: bytes, files: dict[str, bytes]) -> bytes:
    """data (a serialised ModelProto) with every initializer of its main graph that has external data
    made inline: raw_data is the entry's bytes (location, offset, length) of files[location]. Entries
    must have been checked (the loader does). External data anywhere else stays as it is."""
    def tensor(buf: memoryview) -> bytes:
        entries, kept = {}, []
        for n, w, v, raw in _spans(buf):
            if w == 2 and n == TENSOR_EXTERNAL_DATA:
                key, value = _entry(v)
                entries[key] = value
            elif n != TENSOR_DATA_LOCATION:
                kept.append(bytes(raw))
        if not entries:
            return bytes(buf)
        offset = int(entries.get("offset", 0))
        raw_data = files[entries["location"]][offset:offset + int(entries["length"])]
        return b"".join(kept) + _length_delimited(TENSOR_RAW_DATA, raw_data)

    return _rewrite(memoryview(data), MODEL_GRAPH, lambda graph: _rewrite(graph, GRAPH_INITIALIZER, tensor))
