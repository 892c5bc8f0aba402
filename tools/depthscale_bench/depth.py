"""b. Depth: the peak RSS of a fresh process running at each T, for eager and for ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

from .timing import fresh_process

CHILD = Path(__file__).with_name("rss_child.py")


def run(checkpoint: Path, artifact: Path, plan, log) -> dict:
    """Peak RSS per backend and T at plan.depth_shape, one thread; ratio peak(T max) / peak(T min)."""
    batch, seq = plan.depth_shape
    result = {"batch": batch, "seq": seq, "threads": 1, "rows": []}
    for backend, source in (("eager", checkpoint), ("onnxruntime", artifact)):
        peaks = {}
        for T in plan.depth_iters:
            r = fresh_process(CHILD, [backend, str(source), str(batch), str(seq), str(T), "1"])
            peaks[T] = r["peak_rss_mib"]
            result["rows"].append({"backend": backend, "max_iters": T, **r})
            log(f"depth {backend} T{T}: peak RSS {r['peak_rss_mib']:.1f} MiB (after load {r['rss_after_load_mib']:.1f})")
        lo, hi = min(plan.depth_iters), max(plan.depth_iters)
        result[f"{backend}_peak_ratio"] = peaks[hi] / peaks[lo]
    result["ratio_label"] = f"peak RSS(T={max(plan.depth_iters)}) / peak RSS(T={min(plan.depth_iters)})"
    return result
