"""d. Size: ONNX bytes against the T cap, bits per packed BitLinear weight, artifact against checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from depthscale_export.graph.ops import DOMAIN
from depthscale_export.engines.readiness import graph_nodes

BITLINEAR_OPS = ("BitLinear", "GatedBitLinear")


def bitlinear_bits(onnx_path: Path) -> dict:
    """Bits per weight of every BitLinear node's packed weight (initializer W, uint8), without and with
    its float32 scale γ."""
    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    weights = payload = scales = 0
    seen = set()
    for node in graph_nodes(model.graph):
        if node.domain != DOMAIN or node.op_type not in BITLINEAR_OPS or node.input[1] in seen:
            continue
        seen.add(node.input[1])
        packed = numpy_helper.to_array(inits[node.input[1]])
        in_features = next(a.i for a in node.attribute if a.name == "in_features")
        weights += packed.shape[0] * in_features
        payload += packed.nbytes
        scales += numpy_helper.to_array(inits[node.input[2]]).nbytes
    return {"bitlinear_tensors": len(seen), "bitlinear_weights": weights, "packed_bytes": payload,
            "scale_bytes": scales, "bits_per_weight": 8 * payload / weights,
            "bits_per_weight_with_scales": 8 * (payload + scales) / weights,
            "weight_dtypes": sorted({str(numpy_helper.to_array(inits[n]).dtype) for n in seen})}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def run(artifacts: dict[int, Path], checkpoint: Path) -> dict:
    """artifacts: {T cap: artifact dir} of the same model; checkpoint: its float32 model.pt."""
    caps = sorted(artifacts)
    largest = artifacts[caps[-1]]
    onnx_bytes = {cap: (artifacts[cap] / "model.onnx").stat().st_size for cap in caps}
    return {
        "onnx_bytes_by_cap": {str(cap): b for cap, b in onnx_bytes.items()},
        "onnx_bytes_ratio_largest_over_smallest_cap": onnx_bytes[caps[-1]] / onnx_bytes[caps[0]],
        **bitlinear_bits(largest / "model.onnx"),
        "artifact_bytes": dir_bytes(largest),
        "onnx_bytes": onnx_bytes[caps[-1]],
        "checkpoint_fp32_bytes": Path(checkpoint).stat().st_size,
        "artifact_over_checkpoint": dir_bytes(largest) / Path(checkpoint).stat().st_size,
        "onnx_initializer_bytes_by_dtype": _initializer_bytes(largest / "model.onnx"),
    }


def _initializer_bytes(onnx_path: Path) -> dict:
    """Bytes of the graph's initializers per dtype (what the file holds besides the graph)."""
    out: dict[str, int] = {}
    for init in onnx.load(str(onnx_path)).graph.initializer:
        arr = numpy_helper.to_array(init)
        out[str(arr.dtype)] = out.get(str(arr.dtype), 0) + arr.nbytes
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
