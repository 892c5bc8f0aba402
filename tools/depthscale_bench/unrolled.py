"""e. Loop against unrolled: the same model with the recursion as one ONNX Loop and unrolled for a fixed
T, exported the same way (models.Workspace.graph); ONNX Runtime session-creation time, latency, file
size, node count and export time."""

from __future__ import annotations

import numpy as np
import onnx

from depthscale_export.engines.readiness import graph_nodes

from .runners import OrtRun, seeded_ids, session
from .timing import interleaved


def run(loop, unrolled, steps: int, vocab_size: int, plan, log) -> dict:
    """loop, unrolled: models.Exported. Both run at T = steps, batch 1, the anchor's seq, one thread."""
    paths = {"loop": loop.onnx_path, "unrolled": unrolled.onnx_path}
    creation = interleaved({k: (lambda p=p: session(p, 1)) for k, p in paths.items()}, reps=plan.session_reps,
                           warmup=0)
    sessions = {k: session(p, 1) for k, p in paths.items()}
    ids = seeded_ids(vocab_size, 1, plan.anchor[1])
    runs = {k: OrtRun(s, ids, steps, 0.0) for k, s in sessions.items()}
    latency = interleaved(runs, reps=plan.reps, budget_s=plan.budget_s)
    result = {"steps": steps, "batch": 1, "seq": plan.anchor[1], "threads": 1,
              "same_outputs": bool(np.array_equal(runs["loop"].last[0], runs["unrolled"].last[0])
                                   and np.array_equal(runs["loop"].last[1], runs["unrolled"].last[1]))}
    for k, exported in (("loop", loop), ("unrolled", unrolled)):
        result[k] = {"onnx_bytes": paths[k].stat().st_size, "export_s": exported.seconds,
                     "session_create_median_s": creation[k]["median_s"], "latency_median_s": latency[k]["median_s"],
                     "nodes": _node_count(paths[k])}
    for metric in ("onnx_bytes", "session_create_median_s", "latency_median_s", "nodes"):
        result[f"unrolled_over_loop_{metric}"] = result["unrolled"][metric] / result["loop"][metric]
    log(f"unrolled T{steps}: session {result['unrolled']['session_create_median_s']:.2f} s vs loop "
        f"{result['loop']['session_create_median_s']:.2f} s; latency {result['unrolled']['latency_median_s']:.3f} s vs "
        f"{result['loop']['latency_median_s']:.3f} s; bytes {result['unrolled']['onnx_bytes']:,} vs {result['loop']['onnx_bytes']:,}")
    return result


def _node_count(path) -> int:
    """Nodes in the graph, subgraphs included."""
    return sum(1 for _ in graph_nodes(onnx.load(str(path)).graph))
