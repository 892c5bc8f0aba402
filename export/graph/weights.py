"""One weights file for all of an artifact's graphs (ONNX external data).

The forward, prefill and decode graphs read the same packed weights, RoPE tables and norms; each
distinct initializer of INLINE_BELOW bytes or more is written once to weights.bin (by content, at
ALIGN-byte offsets) and every graph references it there. Smaller ones (shape constants, scalars) stay
inline in their graph.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx_ir as ir

WEIGHTS_FILE = "weights.bin"
INLINE_BELOW = 1024
ALIGN = 64


def save_graphs(graphs: dict[str, ir.Model], directory: Path) -> dict[str, str]:
    """Write directory/WEIGHTS_FILE and directory/NAME.onnx for every graph. Returns {name: file}."""
    stored: dict[bytes, tuple[int, int]] = {}
    offset = 0
    with open(directory / WEIGHTS_FILE, "wb") as weights:
        for graph in graphs.values():
            for name, value in graph.graph.initializers.items():
                tensor = value.const_value
                if tensor is None or tensor.nbytes < INLINE_BELOW:
                    continue
                data = tensor.tobytes()
                key = hashlib.sha256(data).digest()
                if key not in stored:
                    pad = -offset % ALIGN
                    weights.write(b"\0" * pad + data)
                    stored[key] = (offset + pad, len(data))
                    offset += pad + len(data)
                at, length = stored[key]
                value.const_value = ir.ExternalTensor(WEIGHTS_FILE, at, length, tensor.dtype, shape=tensor.shape,
                                                      name=name, base_dir=directory)
    files = {}
    for name, graph in graphs.items():
        files[name] = f"{name}.onnx"
        ir.save(graph, directory / files[name])
    return files


def in_memory(graph: ir.Model) -> ir.Model:
    """The graph with its external tensors read into memory (for a copy saved or serialised elsewhere)."""
    return ir.external_data.load_to_model(graph)
