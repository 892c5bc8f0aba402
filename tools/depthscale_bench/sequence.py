"""c. Sequence: ONNX Runtime latency against sequence length, window attention against full attention
(the same weights with window = max_seq_len), and the log-log slope of each."""

from __future__ import annotations

import math

import numpy as np

from .runners import OrtRun, runtime, seeded_ids
from .timing import interleaved


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def run(window_artifact, full_artifact, vocab_size: int, plan, log) -> dict:
    T, batch = plan.seq_iters, 1
    rts = {"window": runtime(window_artifact, 1), "full": runtime(full_artifact, 1)}
    rows = []
    for seq in plan.seq_sweep:
        ids = seeded_ids(vocab_size, batch, seq)
        # two warm-up rounds: at a new, longer length ONNX Runtime's arena takes two runs to settle
        # (seen here: 4.8, 4.2, 3.8, 3.8 s at 2048 tokens)
        t = interleaved({k: OrtRun(rt, ids, T, 0.0) for k, rt in rts.items()}, reps=plan.reps, warmup=2,
                        budget_s=plan.budget_s)
        rows.append({"seq": seq, "window_median_s": t["window"]["median_s"], "full_median_s": t["full"]["median_s"],
                     "window_times_s": t["window"]["times_s"], "full_times_s": t["full"]["times_s"]})
        log(f"sequence s{seq}: window {t['window']['median_s']:.3f} s, full {t['full']['median_s']:.3f} s")
    seqs = [r["seq"] for r in rows]
    result = {"batch": batch, "max_iters": T, "threads": 1, "backend": "onnxruntime", "rows": rows}
    for kind in ("window", "full"):
        times = [r[f"{kind}_median_s"] for r in rows]
        result[f"{kind}_slope"] = loglog_slope(seqs, times)
        result[f"{kind}_pairwise_slopes"] = [math.log(times[i + 1] / times[i]) / math.log(seqs[i + 1] / seqs[i])
                                             for i in range(len(seqs) - 1)]
    return result
