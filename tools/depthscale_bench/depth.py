"""b. Depth: the peak RSS of a fresh process running at each T, for eager and for ONNX Runtime."""

from __future__ import annotations

import statistics
from pathlib import Path

from .timing import fresh_process

CHILD = Path(__file__).with_name("rss_child.py")


def run(checkpoint: Path, artifact: Path, plan, log) -> dict:
    """Peak RSS per backend and T at plan.depth_shape, one thread: the median of plan.depth_reps fresh
    processes (a process's footprint varies by a few percent from run to run), interleaved over T;
    ratio peak(T max) / peak(T min)."""
    batch, seq = plan.depth_shape
    result = {"batch": batch, "seq": seq, "threads": 1, "processes_per_point": plan.depth_reps, "rows": []}
    for backend, source in (("eager", checkpoint), ("onnxruntime", artifact)):
        runs: dict[int, list[dict]] = {T: [] for T in plan.depth_iters}
        for _ in range(plan.depth_reps):
            for T in plan.depth_iters:
                runs[T].append(fresh_process(CHILD, [backend, str(source), str(batch), str(seq), str(T), "1"]))
        peaks = {}
        for T, rs in runs.items():
            r = {key: statistics.median(x[key] for x in rs) for key in ("peak_rss_mib", "rss_after_load_mib", "run_s")}
            peaks[T] = r["peak_rss_mib"]
            result["rows"].append({"backend": backend, "max_iters": T, **r,
                                   "peak_rss_mib_each": [x["peak_rss_mib"] for x in rs],
                                   "torch_imported": any(x["torch_imported"] for x in rs)})
            log(f"depth {backend} T{T}: peak RSS {r['peak_rss_mib']:.1f} MiB (after load {r['rss_after_load_mib']:.1f})")
        lo, hi = min(plan.depth_iters), max(plan.depth_iters)
        result[f"{backend}_peak_ratio"] = peaks[hi] / peaks[lo]
    result["ratio_label"] = f"peak RSS(T={max(plan.depth_iters)}) / peak RSS(T={min(plan.depth_iters)})"
    return result
