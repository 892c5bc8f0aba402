"""a. Latency: eager PyTorch against ONNX Runtime on the same inputs, interleaved, medians."""

from __future__ import annotations

import itertools

from .runners import EagerRun, OrtRun, agreement, runtime, seeded_ids
from .timing import interleaved


def shapes(plan) -> list[tuple[int, int, int]]:
    """(batch, seq, T) points: every combination (grid "full"), each axis varied around the anchor
    with the others held at the anchor's values (grid "axes"), or the anchor only (grid "anchor")."""
    if plan.grid == "full":
        return list(itertools.product(plan.batches, plan.seqs, plan.iters))
    if plan.grid == "anchor":
        return [plan.anchor]
    b0, n0, t0 = plan.anchor
    points = [(b, n0, t0) for b in plan.batches] + [(b0, n, t0) for n in plan.seqs] + [(b0, n0, t) for t in plan.iters]
    return sorted(set(points), key=points.index)


def run(models: list, plan, log) -> list[dict]:
    """models: [(label, eager packed model, artifact dir)]. One row per model, shape and thread count."""
    rows = []
    for (label, model, artifact), threads in itertools.product(models, plan.threads):
        rt = runtime(artifact, threads)
        for batch, seq, T in shapes(plan):
            row = {"model": label, "batch": batch, "seq": seq, "max_iters": T, "tol": 0.0, "threads": threads}
            if seq > model.config.max_seq_len or T > rt.artifact.max_iters_cap:
                rows.append({**row, "skipped": f"outside the model's max_seq_len {model.config.max_seq_len} "
                                               f"or T cap {rt.artifact.max_iters_cap}"})
                continue
            ids = seeded_ids(model.config.vocab_size, batch, seq)
            eager, onnx = EagerRun(model, ids, T, 0.0, threads), OrtRun(rt, ids, T, 0.0)
            t = interleaved({"eager": eager, "onnxruntime": onnx}, reps=plan.reps, budget_s=plan.budget_s)
            e, o = t["eager"]["median_s"], t["onnxruntime"]["median_s"]
            rows.append({**row, "eager_median_s": e, "ort_median_s": o, "eager_over_ort": e / o,
                         "ort_tokens_per_s": batch * seq / o, "reps": len(t["eager"]["times_s"]),
                         "eager_times_s": t["eager"]["times_s"], "ort_times_s": t["onnxruntime"]["times_s"],
                         **agreement(eager.last, onnx.last)})
            log(f"latency {label} b{batch} s{seq} T{T} {threads}t: eager {e:.3f} s, ORT {o:.3f} s, "
                f"ratio {e / o:.2f}")
    return rows
